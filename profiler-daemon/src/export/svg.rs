//! Interactive SVG flamegraph (inferno) from folded stacks.

use super::ExportError;

/// Opens the flamegraph on its root. A flamegraph grows upwards from the root at the bottom;
/// a browser shows an SVG taller than its window from the top, where a whole-machine graph has
/// only the tips of its deepest stacks, so the page looked blank. Scrolling to the bottom once
/// loaded shows the root and the widest frames first (the tips are one scroll up). Inferno's
/// own script is left as it is.
const OPEN_ON_ROOT: &str = r#"<script type="text/ecmascript"><![CDATA[
window.addEventListener("load", function () {
    if (window.top === window.self && !window.location.hash) {
        window.scrollTo(0, document.documentElement.scrollHeight);
    }
});
]]></script>
"#;

/// Renders the flamegraph. An empty profile still gives a valid SVG that says so.
pub fn render(lines: &[(String, u64)], title: &str) -> Result<Vec<u8>, ExportError> {
    if lines.iter().all(|(_, count)| *count == 0) {
        return Ok(empty(title).into_bytes());
    }
    let mut options = inferno::flamegraph::Options::default();
    title.clone_into(&mut options.title);
    "samples".clone_into(&mut options.count_name);
    options.hash = true;
    let text: Vec<String> = lines.iter().map(|(s, c)| format!("{s} {c}")).collect();
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut options, text.iter().map(String::as_str), &mut out)
        .map_err(|e| ExportError::Flamegraph(e.to_string()))?;
    Ok(insert_before_end(out, OPEN_ON_ROOT))
}

/// `extra` inserted just before the closing `</svg>` (appended if there is none).
fn insert_before_end(mut svg: Vec<u8>, extra: &str) -> Vec<u8> {
    const END: &[u8] = b"</svg>";
    let at = svg
        .windows(END.len())
        .rposition(|w| w == END)
        .unwrap_or(svg.len());
    svg.splice(at..at, extra.bytes());
    svg
}

/// A small valid SVG saying that nothing was sampled (inferno refuses an empty input).
fn empty(title: &str) -> String {
    format!(
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="120" viewBox="0 0 1200 120" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="#eeeeee"/>
<text x="600" y="40" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>
<text x="600" y="80" text-anchor="middle" font-family="Verdana" font-size="14">No samples were recorded: the selected processes did not run on a CPU while sampling.</text>
</svg>
"##,
        escape(title)
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_profile_is_a_valid_svg_that_says_so() {
        let svg = String::from_utf8(render(&[], "t <1>").unwrap()).unwrap();
        assert!(svg.contains("No samples were recorded"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn the_graph_opens_on_its_root() {
        let svg = render(&[("a;b".to_owned(), 3)], "t").unwrap();
        let svg = String::from_utf8(svg).unwrap();
        let script = svg.find("window.scrollTo").unwrap();
        assert!(script < svg.rfind("</svg>").unwrap());
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}

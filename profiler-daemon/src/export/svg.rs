//! Interactive SVG flamegraph (inferno) from folded stacks.

use super::ExportError;

/// Renders the flamegraph. An empty profile still gives a valid SVG that says so.
pub fn render(lines: &[(String, u64)], title: &str) -> Result<Vec<u8>, ExportError> {
    let mut options = inferno::flamegraph::Options::default();
    title.clone_into(&mut options.title);
    "samples".clone_into(&mut options.count_name);
    options.hash = true;
    let text: Vec<String> = lines.iter().map(|(s, c)| format!("{s} {c}")).collect();
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut options, text.iter().map(String::as_str), &mut out)
        .map_err(|e| ExportError::Flamegraph(e.to_string()))?;
    Ok(out)
}

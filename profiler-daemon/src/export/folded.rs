//! Folded stacks (the format of perf's and inferno's collapsers): one line per unique stack,
//! frames root first separated by `;`, a space, the sample count. The first frame is the process
//! name; user frames follow, then kernel frames with the suffix `_[k]`, leaf last.

use std::collections::HashMap;

use super::FileOptions;
use crate::profile::SymbolizedProfile;

/// Folds a profile into (stack line, count), sorted by stack for stable output.
#[must_use]
pub fn fold(profile: &SymbolizedProfile, options: FileOptions) -> Vec<(String, u64)> {
    let mut lines: HashMap<String, u64> = HashMap::new();
    for stack in profile.shown(options.include_idle) {
        let mut line = sanitize(&stack.process.name);
        for loc in profile.user(stack) {
            for frame in loc.shown_frames(options.keep_addresses).iter() {
                line.push(';');
                line.push_str(&sanitize(&frame.name));
            }
        }
        for loc in profile.kernel(stack) {
            for frame in loc.shown_frames(options.keep_addresses).iter() {
                line.push(';');
                line.push_str(&sanitize(&frame.name));
                line.push_str("_[k]");
            }
        }
        *lines.entry(line).or_default() += stack.count;
    }
    let mut lines: Vec<(String, u64)> = lines.into_iter().collect();
    lines.sort_unstable();
    lines
}

/// The folded text.
#[must_use]
pub fn render(lines: &[(String, u64)]) -> String {
    let mut out = String::new();
    for (stack, count) in lines {
        out.push_str(stack);
        out.push(' ');
        out.push_str(&count.to_string());
        out.push('\n');
    }
    out
}

/// `;` separates frames and a newline ends the line: neither may appear inside a name.
pub(crate) fn sanitize(name: &str) -> String {
    let trimmed = if name.is_empty() { "[unnamed]" } else { name };
    trimmed.replace([';', '\n', '\r'], ":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::test_support::{profile, stack};

    #[test]
    fn folds_user_then_kernel_with_suffix_and_merges_threads() {
        let profile = profile(vec![
            stack(
                7,
                7,
                &[&["main"], &["work", "inlined"]],
                &[&["sys_write"], &["vfs;write"]],
                3,
            ),
            stack(
                7,
                8,
                &[&["main"], &["work", "inlined"]],
                &[&["sys_write"], &["vfs;write"]],
                2,
            ),
            stack(7, 8, &[&["main"]], &[], 1),
            stack(0, 0, &[], &[&["do_idle"]], 9),
        ]);
        let lines = fold(&profile, FileOptions::default());
        assert_eq!(
            render(&lines),
            "app;main 1\napp;main;work;inlined;sys_write_[k];vfs:write_[k] 5\n"
        );
        let with_idle = fold(
            &profile,
            FileOptions {
                include_idle: true,
                ..FileOptions::default()
            },
        );
        assert!(render(&with_idle).contains("swapper;do_idle_[k] 9\n"));
    }

    #[test]
    fn unnamed_addresses_are_grouped_by_file_unless_kept_apart() {
        let profile = profile(vec![
            stack(7, 7, &[&["main"], &[]], &[&[]], 2),
            stack(7, 7, &[&["main"], &[], &[]], &[], 3),
        ]);
        let grouped = render(&fold(&profile, FileOptions::default()));
        assert_eq!(
            grouped,
            "app;main;[app];[app] 3\napp;main;[app];[kernel]_[k] 2\n"
        );
        let kept = render(&fold(
            &profile,
            FileOptions {
                keep_addresses: true,
                ..FileOptions::default()
            },
        ));
        assert!(
            kept.contains("app;main;[unknown] app+0x1001;[unknown] [kernel]+0x1000_[k] 2\n"),
            "{kept}"
        );
        assert!(
            kept.contains("[unknown] app+0x1001;[unknown] app+0x1002 3\n"),
            "{kept}"
        );
    }

    #[test]
    fn output_parses_as_folded_for_inferno() {
        let profile = profile(vec![stack(7, 7, &[&["main"], &["f"]], &[], 4)]);
        let text = render(&fold(&profile, FileOptions::default()));
        let mut svg = Vec::new();
        let mut opts = inferno::flamegraph::Options::default();
        inferno::flamegraph::from_lines(&mut opts, text.lines(), &mut svg).unwrap();
        assert!(String::from_utf8(svg).unwrap().contains("main"));
    }
}

//! The live page's questions, answered on the server from the history: the flamegraph tree of a
//! time range and service (only the frames wide enough to draw), the top functions, the
//! services, and the folded stacks behind the downloads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde_json::{Value, json};

use super::history::Window;

/// Frames narrower than this share of the view are left out of the tree: at 2,000 pixels wide,
/// they would be under one pixel. The downloads keep everything.
const MIN_SHARE: f64 = 1.0 / 4000.0;
/// Rows of the top-functions table.
const TOP_ROWS: usize = 100;

/// What a request selects: its windows, and the service (`None`: all).
pub struct Selection<'a> {
    pub windows: &'a [Arc<Window>],
    pub service: Option<&'a str>,
}

impl Selection<'_> {
    /// Every selected stack as (names root first, samples).
    fn stacks(&self) -> impl Iterator<Item = (Vec<&str>, u64)> + '_ {
        self.windows.iter().flat_map(move |w| {
            let wanted = self
                .service
                .map(|s| w.services.iter().position(|n| &**n == s));
            w.stacks
                .iter()
                .filter(move |st| match wanted {
                    None => true,
                    Some(Some(i)) => st.service as usize == i,
                    Some(None) => false,
                })
                .map(move |st| {
                    let names = st
                        .frames
                        .iter()
                        .map(|&f| w.names.get(f as usize).map_or("", |n| &**n))
                        .collect();
                    (names, st.count)
                })
        })
    }

    /// Samples per service over the windows (whatever `service` says).
    #[must_use]
    pub fn services(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for w in self.windows {
            for st in &w.stacks {
                if let Some(name) = w.services.get(st.service as usize) {
                    *out.entry(name.to_string()).or_default() += st.count;
                }
            }
        }
        out
    }

    /// Folded lines (`a;b;c`, samples), merged, sorted.
    #[must_use]
    pub fn folded(&self) -> Vec<(String, u64)> {
        let mut lines: HashMap<String, u64> = HashMap::new();
        for (names, count) in self.stacks() {
            // The same frame names as the file writer's folded stacks.
            let line: Vec<String> = names
                .iter()
                .map(|n| crate::export::folded::sanitize(n))
                .collect();
            *lines.entry(line.join(";")).or_default() += count;
        }
        let mut lines: Vec<(String, u64)> = lines.into_iter().collect();
        lines.sort_unstable();
        lines
    }

    /// Calls `each(names, stack)` for every selected stack, with the stack's frames as ids of
    /// one name table over all windows (`names`), so that the aggregations hash integers, not
    /// strings, and copy nothing.
    fn each_interned<'a>(&'a self, mut each: impl FnMut(&[u32], u64)) -> Vec<&'a str> {
        let mut global: FxHashMap<&'a str, u32> = FxHashMap::default();
        let mut names: Vec<&'a str> = Vec::new();
        let mut ids = Vec::new();
        for w in self.windows {
            let wanted = self
                .service
                .map(|s| w.services.iter().position(|n| &**n == s));
            if wanted == Some(None) {
                continue;
            }
            let local: Vec<u32> = w
                .names
                .iter()
                .map(|n| {
                    *global.entry(&**n).or_insert_with(|| {
                        names.push(&**n);
                        (names.len() - 1) as u32
                    })
                })
                .collect();
            for st in &w.stacks {
                if wanted.is_some_and(|i| i != Some(st.service as usize)) {
                    continue;
                }
                ids.clear();
                ids.extend(
                    st.frames
                        .iter()
                        .filter_map(|&f| local.get(f as usize).copied()),
                );
                each(&ids, st.count);
            }
        }
        names
    }

    /// The flamegraph tree: `[name, total, self, [children...]]` from the root `all`, children
    /// widest first, frames under `MIN_SHARE` of the total left out (their samples stay in
    /// their parent's total).
    #[must_use]
    pub fn tree(&self) -> (Value, u64) {
        // Nodes in creation order (a parent before its children), and the edges between them.
        let mut nodes = vec![Flat {
            name: u32::MAX,
            parent: 0,
            total: 0,
            own: 0,
        }];
        let mut edges: FxHashMap<(u32, u32), u32> = FxHashMap::default();
        let names = self.each_interned(|frames, count| {
            let mut node = 0u32;
            nodes[0].total += count;
            for &name in frames {
                let next = *edges.entry((node, name)).or_insert_with(|| {
                    nodes.push(Flat {
                        name,
                        parent: node,
                        total: 0,
                        own: 0,
                    });
                    (nodes.len() - 1) as u32
                });
                if let Some(n) = nodes.get_mut(next as usize) {
                    n.total += count;
                }
                node = next;
            }
            if let Some(n) = nodes.get_mut(node as usize) {
                n.own += count;
            }
        });
        let total = nodes[0].total;
        let min = ((total as f64) * MIN_SHARE).ceil() as u64;
        // Children of the nodes drawn: wide enough, under a node drawn.
        let mut kept = vec![false; nodes.len()];
        kept[0] = true;
        let mut children: FxHashMap<u32, Vec<u32>> = FxHashMap::default();
        for (i, n) in nodes.iter().enumerate().skip(1) {
            if n.total >= min && kept[n.parent as usize] {
                kept[i] = true;
                children.entry(n.parent).or_default().push(i as u32);
            }
        }
        (to_json(0, &nodes, &children, &names), total)
    }

    /// The functions with the most samples of their own (`self`), with their `total` (samples
    /// of stacks they are in, once per stack).
    #[must_use]
    pub fn top(&self) -> Vec<(String, u64, u64)> {
        let mut own: Vec<u64> = Vec::new();
        let mut total: Vec<u64> = Vec::new();
        // The last stack that counted a name, so a recursive name counts once per stack.
        let mut last: Vec<u64> = Vec::new();
        let mut stack_no = 0u64;
        let names = self.each_interned(|frames, count| {
            stack_no += 1;
            let Some(&leaf) = frames.last() else {
                return;
            };
            let needed = frames.iter().copied().max().map_or(0, |m| m as usize + 1);
            if own.len() < needed {
                own.resize(needed, 0);
                total.resize(needed, 0);
                last.resize(needed, 0);
            }
            own[leaf as usize] += count;
            // The first frame is the process: not a function.
            for &f in frames.iter().skip(1) {
                if last[f as usize] != stack_no {
                    last[f as usize] = stack_no;
                    total[f as usize] += count;
                }
            }
        });
        let mut rows: Vec<(String, u64, u64)> = own
            .iter()
            .zip(&total)
            .enumerate()
            .filter(|(_, (o, t))| **o + **t > 0)
            .map(|(i, (&o, &t))| (names.get(i).copied().unwrap_or("").to_owned(), o, t))
            .collect();
        rows.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
        rows.truncate(TOP_ROWS);
        rows
    }
}

/// A node of the tree being built.
struct Flat {
    name: u32,
    parent: u32,
    total: u64,
    own: u64,
}

/// `[name, total, self, [children...]]`, children widest first.
fn to_json(
    node: u32,
    nodes: &[Flat],
    children: &FxHashMap<u32, Vec<u32>>,
    names: &[&str],
) -> Value {
    // The root's name is `u32::MAX`: no entry.
    let name_of = |n: &Flat| names.get(n.name as usize).copied().unwrap_or("all");
    let Some(n) = nodes.get(node as usize) else {
        return Value::Null;
    };
    let mut kids: Vec<u32> = children.get(&node).cloned().unwrap_or_default();
    kids.sort_unstable_by(|&a, &b| {
        let (a, b) = (&nodes[a as usize], &nodes[b as usize]);
        b.total
            .cmp(&a.total)
            .then_with(|| name_of(a).cmp(name_of(b)))
    });
    let kids: Vec<Value> = kids
        .into_iter()
        .map(|k| to_json(k, nodes, children, names))
        .collect();
    json!([name_of(n), n.total, n.own, kids])
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::super::history::LiveStack;
    use super::*;

    fn window() -> Arc<Window> {
        let names = ["app", "main", "work", "idle_loop", "sys_write_[k]"];
        let stack = |service: u32, frames: &[u32], count: u64| LiveStack {
            service,
            frames: frames.into(),
            count,
        };
        Arc::new(Window {
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            names: names.iter().map(|&n| Arc::from(n)).collect(),
            services: vec![Arc::from("web"), Arc::from("db")],
            stacks: vec![
                stack(0, &[0, 1, 2], 6),
                stack(0, &[0, 1, 2, 4], 3),
                stack(1, &[0, 1, 3], 1),
            ],
        })
    }

    #[test]
    fn the_tree_sums_children_into_parents_and_filters_by_service() {
        let windows = [window()];
        let all = Selection {
            windows: &windows,
            service: None,
        };
        let (tree, total) = all.tree();
        assert_eq!(total, 10);
        assert_eq!(tree[0], "all");
        let main = &tree[3][0][3][0];
        assert_eq!(main[0], "main");
        assert_eq!(main[1], 10);
        assert_eq!(main[3][0][0], "work");
        assert_eq!(main[3][0][2], 6, "self of work");
        let web = Selection {
            windows: &windows,
            service: Some("web"),
        };
        assert_eq!(web.tree().1, 9);
        let none = Selection {
            windows: &windows,
            service: Some("nobody"),
        };
        assert_eq!(none.tree().1, 0);
        assert_eq!(all.services().get("db"), Some(&1));
    }

    #[test]
    fn top_counts_self_at_the_leaf_and_total_once_per_stack() {
        let windows = [window()];
        let sel = Selection {
            windows: &windows,
            service: None,
        };
        let top = sel.top();
        assert_eq!(top[0], ("work".to_owned(), 6, 9));
        assert!(top.contains(&("main".to_owned(), 0, 10)));
        assert_eq!(
            sel.folded()[0],
            ("app;main;idle_loop".to_owned(), 1),
            "sorted folded lines"
        );
    }
}

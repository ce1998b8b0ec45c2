//! The live page's memory: the last windows' stacks as names, bounded in age and in entries.
//!
//! Each window keeps its own table of names (a stack is a list of indices into it), so a window
//! dropped from the history frees everything it held.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::export::otlp::{EncodeOptions, service_name};
use crate::profile::SymbolizedProfile;

/// The longest time range the page offers.
pub const MAX_AGE: Duration = Duration::from_mins(15);

/// One stack of a window: its service, its frames (root first: the process, user frames, kernel
/// frames with the suffix `_[k]`), its samples.
#[derive(Debug, Clone)]
pub struct LiveStack {
    pub service: u32,
    pub frames: Box<[u32]>,
    pub count: u64,
}

/// One closed window.
#[derive(Debug)]
pub struct Window {
    pub start: SystemTime,
    pub end: SystemTime,
    /// Frame names; `LiveStack::frames` index it.
    pub names: Vec<Arc<str>>,
    /// Service names; `LiveStack::service` indexes it.
    pub services: Vec<Arc<str>>,
    pub stacks: Vec<LiveStack>,
}

impl Window {
    /// The window of `profile` as the page shows it: unnamed addresses grouped by file (as in
    /// `.svg` files), idle left out, services named as the export names them.
    #[must_use]
    pub fn of(profile: &SymbolizedProfile, options: &EncodeOptions, end: SystemTime) -> Self {
        let mut names = Table::default();
        let mut services = Table::default();
        let mut merged: HashMap<(u32, Box<[u32]>), u64> = HashMap::new();
        let mut frames = Vec::new();
        let mut service_of: HashMap<*const crate::procfs::ProcessInfo, u32> = HashMap::new();
        for stack in profile.shown(false) {
            frames.clear();
            frames.push(names.id(&stack.process.name));
            for loc in profile.user(stack) {
                for frame in loc.shown_frames(false).iter() {
                    frames.push(names.id(&frame.name));
                }
            }
            for loc in profile.kernel(stack) {
                for frame in loc.shown_frames(false).iter() {
                    frames.push(names.id(&format!("{}_[k]", frame.name)));
                }
            }
            // Once per process (the rules and the pod lookup), not once per stack.
            let service = *service_of
                .entry(Arc::as_ptr(&stack.process))
                .or_insert_with(|| services.id(&service_name(&stack.process, options)));
            *merged
                .entry((service, frames.clone().into_boxed_slice()))
                .or_default() += stack.count;
        }
        let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(profile.start_unix_nano);
        Self {
            start,
            end,
            names: names.values,
            services: services.values,
            stacks: merged
                .into_iter()
                .map(|((service, frames), count)| LiveStack {
                    service,
                    frames,
                    count,
                })
                .collect(),
        }
    }
}

/// Names interned within one window.
#[derive(Default)]
struct Table {
    index: HashMap<Arc<str>, u32>,
    values: Vec<Arc<str>>,
}

impl Table {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.index.get(name) {
            return id;
        }
        let id = self.values.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.values.push(Arc::clone(&name));
        self.index.insert(name, id);
        id
    }
}

/// The recent windows: at most `MAX_AGE` old and `max_stacks` stacks in all (the oldest windows
/// go first; the newest is always kept).
#[derive(Debug)]
pub struct History {
    windows: VecDeque<Arc<Window>>,
    stacks: usize,
    max_stacks: usize,
}

impl History {
    #[must_use]
    pub fn new(max_stacks: usize) -> Self {
        Self {
            windows: VecDeque::new(),
            stacks: 0,
            max_stacks,
        }
    }

    pub fn push(&mut self, window: Window) {
        self.stacks += window.stacks.len();
        let newest = window.end;
        self.windows.push_back(Arc::new(window));
        while self.windows.len() > 1
            && (self.stacks > self.max_stacks
                || self
                    .windows
                    .front()
                    .is_some_and(|w| newest.duration_since(w.end).unwrap_or_default() > MAX_AGE))
        {
            if let Some(old) = self.windows.pop_front() {
                self.stacks -= old.stacks.len();
            }
        }
    }

    /// The windows that ended after `since`, oldest first.
    #[must_use]
    pub fn since(&self, since: SystemTime) -> Vec<Arc<Window>> {
        self.windows
            .iter()
            .filter(|w| w.end > since)
            .cloned()
            .collect()
    }

    /// Stacks held, over all windows.
    #[must_use]
    pub fn stacks(&self) -> usize {
        self.stacks
    }

    /// When the newest window ended.
    #[must_use]
    pub fn newest(&self) -> Option<SystemTime> {
        self.windows.back().map(|w| w.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(end_s: u64, stacks: usize) -> Window {
        Window {
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH + Duration::from_secs(end_s),
            names: vec![Arc::from("a")],
            services: vec![Arc::from("s")],
            stacks: vec![
                LiveStack {
                    service: 0,
                    frames: Box::new([0]),
                    count: 1,
                };
                stacks
            ],
        }
    }

    #[test]
    fn the_history_is_bounded_in_stacks_and_age_and_keeps_the_newest() {
        let mut h = History::new(25);
        for i in 0..5 {
            h.push(window(100 + i * 10, 10));
        }
        assert_eq!(h.stacks(), 20, "two windows fit in 25 stacks");
        h.push(window(200, 100));
        assert_eq!(
            h.stacks(),
            100,
            "the newest stays even when alone over the bound"
        );
        let mut h = History::new(1_000_000);
        for i in 0..200 {
            h.push(window(i * 10, 1));
        }
        assert_eq!(h.stacks(), 91, "15 minutes of 10 s windows, both ends in");
        assert_eq!(
            h.since(SystemTime::UNIX_EPOCH + Duration::from_secs(1970))
                .len(),
            2
        );
    }
}

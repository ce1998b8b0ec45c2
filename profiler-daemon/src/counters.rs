//! The catalog of every count the pipeline keeps, kernel side and user side, and what each one
//! means: its metric, and whether it is a loss. The BPF counter decoding, `/metrics`, the
//! `record`/`run` summary lines and the loss logs are all derived from this one table, so adding a
//! count (or a loss reason) is one line here, plus the code that counts it.

use profiler_common::Counter as BpfCounter;

/// What a count says about data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A plain count (work done, outcomes that lose nothing).
    Count,
    /// Samples lost for this reason.
    SampleLoss,
    /// Process (exec/exit) events lost: names of short-lived processes may suffer.
    EventLoss,
    /// Stack walks that failed: the sample is kept without that part.
    WalkFailed,
}

/// One entry of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub count: Count,
    /// Metric family, without the `profiler_` prefix and `_total` suffix.
    pub family: &'static str,
    /// The family's label value for this count (`None`: the family has no label).
    pub label: Option<&'static str>,
    /// The name in summaries and logs.
    pub name: &'static str,
    pub role: Role,
}

/// A metric family: its label key (if any) and its help text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub label_key: Option<&'static str>,
    pub help: &'static str,
}

/// Every metric family the catalog's counts go to.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "bpf_runs",
        label_key: None,
        help: "Perf events the eBPF sampler ran on",
    },
    Family {
        name: "bpf_events",
        label_key: Some("outcome"),
        help: "Perf events handled by the eBPF sampler, by outcome (lost ones are in samples_lost)",
    },
    Family {
        name: "samples",
        label_key: None,
        help: "Samples received by the daemon",
    },
    Family {
        name: "samples_lost",
        label_key: Some("reason"),
        help: "Samples lost, by reason",
    },
    Family {
        name: "samples_unknown_process",
        label_key: None,
        help: "Samples kept under [unknown process PID]: their process was never read",
    },
    Family {
        name: "stack_walks_failed",
        label_key: Some("stack"),
        help: "Stack walks that failed (sample kept without that part)",
    },
    Family {
        name: "process_events",
        label_key: Some("outcome"),
        help: "Process events from the kernel (exec, exit, new mapping area), by outcome",
    },
    Family {
        name: "process_table",
        label_key: Some("event"),
        help: "Process table events: execs, exits, file mappings replaced (dlclose then dlopen \
               at one address), failed mapping snapshots, unmapped addresses",
    },
    Family {
        name: "symbolize",
        label_key: Some("result"),
        help: "Symbolization lookups, by result",
    },
    Family {
        name: "windows",
        label_key: None,
        help: "Profile windows closed",
    },
    Family {
        name: "exports",
        label_key: Some("result"),
        help: "Export requests, by result (sent, failed_attempt, dropped)",
    },
    Family {
        name: "exported_samples",
        label_key: None,
        help: "Samples in export requests delivered",
    },
    Family {
        name: "user_unwind",
        label_key: Some("outcome"),
        help: "User stacks walked with unwind tables (--unwind tables), by outcome",
    },
    Family {
        name: "unwind_tables",
        label_key: Some("event"),
        help: "Modules' unwind tables loaded into the kernel, evicted, failed to build, or left out \
               for want of room beside the tables in use (tried again later)",
    },
    Family {
        name: "kubernetes",
        label_key: Some("event"),
        help: "Kubernetes API (--kubernetes): pod updates taken, errors (unreachable, refused, \
               over the pod bound)",
    },
    Family {
        name: "export_rejected_profiles",
        label_key: None,
        help: "Profiles a receiver rejected in a partial success",
    },
];

/// Declares `Count` and `CATALOG` from one line per count.
macro_rules! catalog {
    ($($count:ident => $family:literal, $label:expr, $name:literal, $role:ident;)*) => {
        /// Every count of the pipeline.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Count { $($count),* }

        /// The catalog, in `Count` order.
        pub const CATALOG: &[Entry] = &[
            $(Entry { count: Count::$count, family: $family, label: $label, name: $name, role: Role::$role }),*
        ];
    };
}

catalog! {
    // Kernel side (the sampler's `COUNTERS` map; see `from_bpf`).
    BpfRuns => "bpf_runs", None, "runs", Count;
    Emitted => "bpf_events", Some("emitted"), "emitted", Count;
    Idle => "bpf_events", Some("idle"), "idle", Count;
    FilteredOut => "bpf_events", Some("filtered_out"), "filtered_out", Count;
    RingBufFull => "samples_lost", Some("ringbuf_full"), "ringbuf_full", SampleLoss;
    AggregateMapFull => "samples_lost", Some("aggregate_map_full"), "aggregate_map_full", SampleLoss;
    StackCollision => "samples_lost", Some("stack_collision"), "stack_collision", SampleLoss;
    KernelStackFailed => "stack_walks_failed", Some("kernel"), "kernel_stack_failed", WalkFailed;
    UserStackFailed => "stack_walks_failed", Some("user"), "user_stack_failed", WalkFailed;
    EventsSent => "process_events", Some("sent"), "events", Count;
    EventsLost => "process_events", Some("lost"), "events_lost", EventLoss;
    UnwindComplete => "user_unwind", Some("complete"), "unwind_complete", Count;
    UnwindTruncated => "user_unwind", Some("truncated"), "unwind_truncated", Count;
    UnwindNoTables => "user_unwind", Some("no_tables"), "unwind_no_tables", Count;
    UnwindFpStep => "user_unwind", Some("fp_step"), "unwind_fp_step", Count;
    UnwindBadRule => "user_unwind", Some("bad_rule"), "unwind_bad_rule", Count;
    // User side: the collector.
    Received => "samples", None, "received", Count;
    Malformed => "samples_lost", Some("malformed"), "malformed", SampleLoss;
    ProfileFull => "samples_lost", Some("profile_full"), "profile_full", SampleLoss;
    UnknownProcess => "samples_unknown_process", None, "unknown_process", Count;
    Execs => "process_table", Some("exec"), "execs", Count;
    Exits => "process_table", Some("exit"), "exits", Count;
    MappingsReplaced => "process_table", Some("mapping_replaced"), "mappings_replaced", Count;
    MappingRecordsLost => "process_table", Some("mapping_records_lost"), "mapping_records_lost", Count;
    SnapshotFailed => "process_table", Some("snapshot_failed"), "snapshot_failed", Count;
    Unmapped => "process_table", Some("unmapped_address"), "unmapped", Count;
    SymbolizeHit => "symbolize", Some("hit"), "symbolize_hit", Count;
    SymbolizeMiss => "symbolize", Some("miss"), "symbolize_miss", Count;
    SymbolizeError => "symbolize", Some("error"), "symbolize_error", Count;
    ProcessNamed => "symbolize", Some("process_named"), "process_named", Count;
    DwarfOverBudget => "symbolize", Some("dwarf_over_budget"), "dwarf_over_budget", Count;
    TablesLoaded => "unwind_tables", Some("loaded"), "tables_loaded", Count;
    TablesEvicted => "unwind_tables", Some("evicted"), "tables_evicted", Count;
    TablesFailed => "unwind_tables", Some("failed"), "tables_failed", Count;
    TablesNoRoom => "unwind_tables", Some("no_room"), "tables_no_room", Count;
    // Export.
    Windows => "windows", None, "windows", Count;
    ExportSent => "exports", Some("sent"), "sent", Count;
    ExportFailedAttempt => "exports", Some("failed_attempt"), "failed_attempts", Count;
    ExportDropped => "exports", Some("dropped"), "dropped", Count;
    ExportedSamples => "exported_samples", None, "exported_samples", Count;
    RejectedProfiles => "export_rejected_profiles", None, "rejected_profiles", Count;
    // Kubernetes metadata.
    KubePodUpdates => "kubernetes", Some("pod_update"), "kubernetes_pod_updates", Count;
    KubeErrors => "kubernetes", Some("error"), "kubernetes_errors", Count;
}

impl Count {
    /// The catalog entry of a kernel counter.
    #[must_use]
    pub const fn from_bpf(counter: BpfCounter) -> Self {
        match counter {
            BpfCounter::Runs => Self::BpfRuns,
            BpfCounter::Emitted => Self::Emitted,
            BpfCounter::Idle => Self::Idle,
            BpfCounter::FilteredOut => Self::FilteredOut,
            BpfCounter::RingBufFull => Self::RingBufFull,
            BpfCounter::KernelStackFailed => Self::KernelStackFailed,
            BpfCounter::UserStackFailed => Self::UserStackFailed,
            BpfCounter::AggregateMapFull => Self::AggregateMapFull,
            BpfCounter::StackCollision => Self::StackCollision,
            BpfCounter::Events => Self::EventsSent,
            BpfCounter::EventsLost => Self::EventsLost,
            BpfCounter::UnwindComplete => Self::UnwindComplete,
            BpfCounter::UnwindTruncated => Self::UnwindTruncated,
            BpfCounter::UnwindNoTables => Self::UnwindNoTables,
            BpfCounter::UnwindFpStep => Self::UnwindFpStep,
            BpfCounter::UnwindBadRule => Self::UnwindBadRule,
        }
    }

    #[must_use]
    pub fn entry(self) -> &'static Entry {
        &CATALOG[self as usize]
    }
}

/// Current values of every count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    values: [u64; CATALOG.len()],
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            values: [0; CATALOG.len()],
        }
    }
}

impl Totals {
    #[must_use]
    pub fn get(&self, count: Count) -> u64 {
        self.values[count as usize]
    }

    pub fn set(&mut self, count: Count, value: u64) {
        self.values[count as usize] = value;
    }

    /// Non-zero counts of `role`, as (name, value), in catalog order.
    #[must_use]
    pub fn of_role(&self, role: Role) -> Vec<(&'static str, u64)> {
        CATALOG
            .iter()
            .filter(|e| e.role == role)
            .map(|e| (e.name, self.get(e.count)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Sum of the counts of `role`.
    #[must_use]
    pub fn sum(&self, role: Role) -> u64 {
        CATALOG
            .iter()
            .filter(|e| e.role == role)
            .map(|e| self.get(e.count))
            .sum()
    }

    /// The losses and failed walks, for summary lines and logs: `0 samples lost` or
    /// `N samples lost (reason n, ...)`, then events lost and failed walks when there are any.
    #[must_use]
    pub fn describe_losses(&self) -> String {
        let detail = |role| {
            self.of_role(role)
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = vec![match self.sum(Role::SampleLoss) {
            0 => "0 samples lost".to_owned(),
            n => format!("{n} samples lost ({})", detail(Role::SampleLoss)),
        }];
        let events = self.sum(Role::EventLoss);
        if events > 0 {
            parts.push(format!("{events} process events lost"));
        }
        let walks = self.sum(Role::WalkFailed);
        if walks > 0 {
            parts.push(format!(
                "{walks} stack walks failed ({})",
                detail(Role::WalkFailed)
            ));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_is_in_count_order_and_families_exist() {
        for (i, e) in CATALOG.iter().enumerate() {
            assert_eq!(e.count as usize, i, "{e:?}");
            let family = FAMILIES.iter().find(|f| f.name == e.family);
            let family = family.unwrap_or_else(|| panic!("no family {}", e.family));
            assert_eq!(family.label_key.is_some(), e.label.is_some(), "{e:?}");
        }
        // Every kernel counter has an entry.
        for c in BpfCounter::ALL {
            assert_eq!(Count::from_bpf(c).entry().count, Count::from_bpf(c));
        }
    }

    #[test]
    fn every_loss_shows_in_the_description() {
        let mut t = Totals::default();
        assert_eq!(t.describe_losses(), "0 samples lost");
        t.set(Count::EventsLost, 2);
        assert_eq!(t.describe_losses(), "0 samples lost; 2 process events lost");
        t.set(Count::RingBufFull, 3);
        t.set(Count::ProfileFull, 1);
        t.set(Count::UserStackFailed, 4);
        assert_eq!(
            t.describe_losses(),
            "4 samples lost (ringbuf_full 3, profile_full 1); 2 process events lost; \
             4 stack walks failed (user_stack_failed 4)"
        );
    }
}

//! Builds one file's table: walks every FDE of `.eh_frame` (then `.debug_frame`), converts its
//! rows, and merges the functions into one sorted table with a marker at each gap.
//!
//! Work is linear in the section sizes: the entries are walked twice (CIEs first, so an FDE's
//! CIE is a map lookup, never a re-parse), and each FDE is charged its own bytes plus its CIE's
//! (whose initial instructions run again for every FDE) against a budget proportional to the
//! section sizes. Memory is bounded by `Limits::max_rows`.

use std::collections::HashMap;

use gimli::{
    BaseAddresses, CieOrFde, CommonInformationEntry, DebugFrame, EhFrame, FrameDescriptionEntry,
    LittleEndian, UnwindContext, UnwindOffset, UnwindSection,
};
use profiler_common::{CFA_END, CFA_INVALID, RBP_UNSUPPORTED, UnwindRow};

use super::elf::CfiInput;
use super::rules::{self, FdeContext, Invalid, Slice};
use super::{InvalidRows, Limits, UnwindError, UnwindStats, UnwindTable};

/// Budget of call frame bytes processed per byte of frame section. A real file spends under 2
/// (each FDE's bytes plus its CIE's, ~20 bytes, again: libc 1.5); a file with huge CIEs shared
/// by many FDEs would otherwise cost their product.
const WORK_PER_SECTION_BYTE: u64 = 8;
/// Budget added to the above, so that tiny sections are not starved.
const WORK_SLACK: u64 = 1 << 20;

/// x86-64's return address column (rip).
const RETURN_ADDRESS: gimli::Register = gimli::Register(16);

/// Which section an FDE came from: `.eh_frame` is what the runtime itself unwinds with, so it
/// wins where both describe the same code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    EhFrame,
    DebugFrame,
}

/// One FDE's rows: `rows[first..first + len]`, covering `[start, end)` (offsets from the base).
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u32,
    end: u32,
    first: usize,
    len: usize,
}

/// Builds the table of `input` within `limits`.
pub(super) fn build(input: &CfiInput<'_>, limits: &Limits) -> Result<UnwindTable, UnwindError> {
    let section_bytes = [input.eh_frame, input.debug_frame]
        .iter()
        .flatten()
        .map(|section| section.data.len() as u64)
        .sum::<u64>();
    let mut collector = Collector {
        limits: *limits,
        base: input.base,
        rows: Vec::new(),
        eh_runs: Vec::new(),
        debug_runs: Vec::new(),
        stats: UnwindStats {
            compressed_debug_frame: input.compressed_debug_frame,
            ..UnwindStats::default()
        },
        work_left: section_bytes
            .saturating_mul(WORK_PER_SECTION_BYTE)
            .saturating_add(WORK_SLACK),
        first_error: None,
    };
    if let Some(eh) = input.eh_frame {
        let mut section = EhFrame::new(eh.data, LittleEndian);
        section.set_address_size(8);
        let bases = BaseAddresses::default()
            .set_eh_frame(eh.address)
            .set_eh_frame_hdr(input.eh_frame_hdr)
            .set_text(input.text)
            .set_got(input.got);
        collector.section(&section, &bases, Source::EhFrame)?;
    }
    if let Some(debug) = input.debug_frame {
        let mut section = DebugFrame::new(debug.data, LittleEndian);
        section.set_address_size(8);
        collector.section(&section, &BaseAddresses::default(), Source::DebugFrame)?;
    }
    collector.finish()
}

struct Collector {
    limits: Limits,
    base: u64,
    /// Every kept FDE's rows, in the order the FDEs came.
    rows: Vec<UnwindRow>,
    eh_runs: Vec<Run>,
    debug_runs: Vec<Run>,
    stats: UnwindStats,
    /// Call frame bytes that may still be processed.
    work_left: u64,
    /// The first error that stopped a section walk, for a file that yields no row at all.
    first_error: Option<gimli::Error>,
}

impl Collector {
    /// Collects the rows of every FDE in `section`.
    fn section<'data, Section>(
        &mut self,
        section: &Section,
        bases: &BaseAddresses,
        source: Source,
    ) -> Result<(), UnwindError>
    where
        Section: UnwindSection<Slice<'data>>,
    {
        // First pass: the CIEs by offset. Damage stops the walk; the FDEs before it still count.
        let mut cies: HashMap<usize, CommonInformationEntry<Slice<'data>>> = HashMap::new();
        let mut entries = section.entries(bases);
        loop {
            match entries.next() {
                Ok(Some(CieOrFde::Cie(cie))) => {
                    cies.insert(cie.offset(), cie);
                }
                Ok(Some(CieOrFde::Fde(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }

        let mut ctx = UnwindContext::new();
        let mut entries = section.entries(bases);
        loop {
            let partial = match entries.next() {
                Ok(None) => return Ok(()),
                Ok(Some(CieOrFde::Cie(_))) => continue,
                Ok(Some(CieOrFde::Fde(partial))) => partial,
                Err(error) => {
                    self.stats.section_errors += 1;
                    self.first_error.get_or_insert(error);
                    return Ok(());
                }
            };
            let parsed = partial.parse(|_, _, offset| {
                let offset: usize = UnwindOffset::into(offset);
                cies.get(&offset)
                    .cloned()
                    .ok_or(gimli::Error::NotCieId(offset as u64))
            });
            let Ok(fde) = parsed else {
                self.stats.skipped.parse += 1;
                continue;
            };
            let cost = (fde.entry_len() as u64).saturating_add(fde.cie().entry_len() as u64);
            if cost > self.work_left {
                self.stats.work_exhausted = true;
                return Ok(());
            }
            self.work_left -= cost;
            self.fde(section, bases, &mut ctx, &fde, source)?;
        }
    }

    /// Collects one FDE's rows, or counts why it is left out. Fails only past the row limit.
    fn fde<'data, Section>(
        &mut self,
        section: &Section,
        bases: &BaseAddresses,
        ctx: &mut UnwindContext<usize>,
        fde: &FrameDescriptionEntry<Slice<'data>>,
        source: Source,
    ) -> Result<(), UnwindError>
    where
        Section: UnwindSection<Slice<'data>>,
    {
        if fde.len() == 0 {
            self.stats.skipped.empty += 1;
            return Ok(());
        }
        let Some((start, end)) = self.relative(fde.initial_address(), fde.len()) else {
            self.stats.skipped.out_of_range += 1;
            return Ok(());
        };
        let context = FdeContext {
            section,
            encoding: fde.cie().encoding(),
            signal: fde.is_signal_trampoline(),
            return_address_is_rip: fde.cie().return_address_register() == RETURN_ADDRESS,
        };
        let first = self.rows.len();
        let mut counts = FdeCounts::default();
        let Ok(mut table) = fde.rows(section, bases, ctx) else {
            self.stats.skipped.parse += 1;
            return Ok(());
        };
        loop {
            let row = match table.next_row() {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(_) => {
                    // A half-read function is worse than none: its gap gets a marker instead.
                    self.rows.truncate(first);
                    self.stats.skipped.parse += 1;
                    return Ok(());
                }
            };
            // Rows past the FDE's end (a bad advance) and rows a later one at the same pc
            // replaces cover nothing.
            let row_start = row.start_address();
            let Some(pc) = row_start
                .checked_sub(self.base)
                .and_then(|pc| u32::try_from(pc).ok())
            else {
                continue;
            };
            if row_start >= row.end_address() || pc < start || pc >= end {
                continue;
            }
            let converted = rules::convert(&context, row);
            counts.count(converted.invalid, &converted.row);
            let new = UnwindRow {
                pc,
                ..converted.row
            };
            if self.rows.len() > first && self.rows.last().is_some_and(|l| l.same_rule(&new)) {
                continue;
            }
            if self.rows.len() >= self.limits.max_rows {
                return Err(UnwindError::TooManyRows {
                    limit: self.limits.max_rows,
                });
            }
            self.rows.push(new);
        }
        counts.add_to(&mut self.stats);
        let run = Run {
            start,
            end,
            first,
            len: self.rows.len() - first,
        };
        match source {
            Source::EhFrame => self.eh_runs.push(run),
            Source::DebugFrame => self.debug_runs.push(run),
        }
        Ok(())
    }

    /// `[vaddr, vaddr + len)` as offsets from the base, if it lies within the 4 GiB above it.
    fn relative(&self, vaddr: u64, len: u64) -> Option<(u32, u32)> {
        let start = vaddr.checked_sub(self.base)?;
        let end = start.checked_add(len)?;
        Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))
    }

    /// Sorts the functions, leaves out overlapping ones, and lays out the table.
    fn finish(mut self) -> Result<UnwindTable, UnwindError> {
        let mut overlap = 0;
        let eh = disjoint(std::mem::take(&mut self.eh_runs), &[], &mut overlap);
        let debug = disjoint(std::mem::take(&mut self.debug_runs), &eh, &mut overlap);
        self.stats.skipped.overlap = overlap;
        self.stats.debug_frame_fdes = debug.len();
        let mut runs = eh;
        runs.extend(debug);
        runs.sort_unstable_by_key(|run| run.start);
        if runs.is_empty()
            && let Some(error) = self.first_error
        {
            return Err(UnwindError::Cfi(error));
        }

        // Laid out in place (a big library's rows are ~12 MiB; a second copy would double the
        // build's peak): the rows of left-out functions go, a marker is added at each gap, and
        // one sort by pc puts the functions in order. Kept functions are disjoint and a marker
        // sits where none is, so every pc is unique and the sort needs no stability.
        let mut rows = std::mem::take(&mut self.rows);
        let mut kept: Vec<(usize, usize)> = runs.iter().map(|r| (r.first, r.len)).collect();
        kept.sort_unstable();
        let mut next = kept.iter().peekable();
        let mut index = 0;
        rows.retain(|_| {
            while next
                .peek()
                .is_some_and(|&&(first, len)| first + len <= index)
            {
                next.next();
            }
            let keep = next
                .peek()
                .is_some_and(|&&(first, len)| (first..first + len).contains(&index));
            index += 1;
            keep
        });
        for (i, run) in runs.iter().enumerate() {
            if runs.get(i + 1).map(|next| next.start) != Some(run.end) {
                self.stats.gap_markers += 1;
                rows.push(UnwindRow {
                    pc: run.end,
                    cfa_kind: CFA_INVALID,
                    ..UnwindRow::default()
                });
            }
        }
        rows.sort_unstable_by_key(|row| row.pc);
        // A row with the rule of the one before it adds nothing (across functions too).
        rows.dedup_by(|row, before| before.same_rule(row));
        rows.shrink_to_fit();
        if rows.len() > self.limits.max_rows {
            return Err(UnwindError::TooManyRows {
                limit: self.limits.max_rows,
            });
        }
        self.stats.rows = rows.len();
        self.stats.fdes = runs.len();
        self.stats.end_rows = rows.iter().filter(|row| row.cfa_kind == CFA_END).count();
        Ok(UnwindTable {
            base: self.base,
            rows,
            stats: self.stats,
        })
    }
}

/// `runs` sorted by start, without those overlapping an earlier one or any of `taken` (sorted
/// and disjoint); each one left out is counted in `overlap`.
fn disjoint(mut runs: Vec<Run>, taken: &[Run], overlap: &mut usize) -> Vec<Run> {
    // By start, then the order the FDEs came in: deterministic whatever the sort.
    runs.sort_unstable_by_key(|run| (run.start, run.first));
    let mut kept: Vec<Run> = Vec::with_capacity(runs.len());
    for run in runs {
        let after_kept = kept.last().is_none_or(|last| last.end <= run.start);
        // Of the taken runs starting before this one ends, the last ends latest.
        let before = taken.partition_point(|t| t.start < run.end);
        let clear_of_taken =
            before == 0 || taken.get(before - 1).is_none_or(|t| t.end <= run.start);
        if after_kept && clear_of_taken {
            kept.push(run);
        } else {
            *overlap += 1;
        }
    }
    kept
}

/// One FDE's counts, added to the stats only if the whole FDE is kept.
#[derive(Default)]
struct FdeCounts {
    invalid: InvalidRows,
    rbp_unsupported: usize,
}

impl FdeCounts {
    fn count(&mut self, invalid: Option<Invalid>, row: &UnwindRow) {
        match invalid {
            Some(Invalid::CfaRegister) => self.invalid.cfa_register += 1,
            Some(Invalid::CfaExpression) => self.invalid.cfa_expression += 1,
            Some(Invalid::OffsetRange) => self.invalid.offset_range += 1,
            Some(Invalid::ReturnAddress) => self.invalid.return_address += 1,
            Some(Invalid::SignalFrame) => self.invalid.signal_frame += 1,
            None if row.rbp_kind == RBP_UNSUPPORTED => self.rbp_unsupported += 1,
            None => {}
        }
    }

    fn add_to(&self, stats: &mut UnwindStats) {
        let (to, from) = (&mut stats.invalid, &self.invalid);
        to.cfa_register += from.cfa_register;
        to.cfa_expression += from.cfa_expression;
        to.offset_range += from.offset_range;
        to.return_address += from.return_address;
        to.signal_frame += from.signal_frame;
        stats.rbp_unsupported += self.rbp_unsupported;
    }
}

//! Tests of the unwind table builder: hand-assembled call frame information for each rule and
//! edge (here), Debian's real binaries (`debian`), agreement with `readelf` (`readelf`), and
//! mutated real sections (`fuzz`).

mod debian;
mod fuzz;
mod readelf;

use profiler_common::{
    CFA_DEREF_RBP, CFA_DEREF_RSP, CFA_END, CFA_INVALID, CFA_PLT, CFA_RBP_OFFSET, CFA_RSP_OFFSET,
    CFA_SIGNAL, RBP_AT_CFA_OFFSET, RBP_AT_RBP_OFFSET, RBP_AT_RSP_OFFSET, RBP_UNCHANGED,
    UNWIND_MAX_ROWS, UNWIND_SEARCH_STEPS, UnwindRow,
};

use super::elf::{CfiInput, FrameSection};
use super::{Limits, UnwindError, UnwindTable, builder};

/// Where the hand-made sections and code pretend to be.
const EH_FRAME_ADDRESS: u64 = 0x9000;
const BASE: u64 = 0x1000;

/// Builds a table from raw section bytes, as the builder sees a file.
pub(super) fn build_sections(
    eh_frame: Option<(&[u8], u64)>,
    debug_frame: Option<&[u8]>,
    base: u64,
    limits: &Limits,
) -> Result<UnwindTable, UnwindError> {
    let input = CfiInput {
        eh_frame: eh_frame.map(|(data, address)| FrameSection { data, address }),
        debug_frame: debug_frame.map(|data| FrameSection { data, address: 0 }),
        text: 0,
        got: 0,
        eh_frame_hdr: 0,
        base,
        compressed_debug_frame: false,
    };
    builder::build(&input, limits)
}

/// The table invariants every successful build keeps.
pub(super) fn check_invariants(table: &UnwindTable, limits: &Limits) {
    assert!(table.rows.len() <= limits.max_rows);
    assert_eq!(table.stats.rows, table.rows.len());
    for pair in table.rows.windows(2) {
        assert!(pair[0].pc < pair[1].pc, "rows not sorted: {pair:?}");
        assert!(!pair[0].same_rule(&pair[1]), "duplicate rows: {pair:?}");
    }
    if let Some(last) = table.rows.last() {
        assert_eq!(last.cfa_kind, CFA_INVALID, "the last row must be a marker");
    }
}

fn uleb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(out: &mut Vec<u8>, mut value: i64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0) {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Call frame instructions, assembled (code alignment 1, data alignment -8).
#[derive(Default, Clone)]
struct Insns(Vec<u8>);

impl Insns {
    fn advance(mut self, delta: u8) -> Self {
        assert!(delta < 64);
        self.0.push(0x40 | delta);
        self
    }
    fn def_cfa(mut self, register: u64, offset: u64) -> Self {
        self.0.push(0x0c);
        uleb(&mut self.0, register);
        uleb(&mut self.0, offset);
        self
    }
    fn def_cfa_offset(mut self, offset: u64) -> Self {
        self.0.push(0x0e);
        uleb(&mut self.0, offset);
        self
    }
    /// `register` saved at CFA - 8 * `factored`.
    fn offset(mut self, register: u8, factored: u64) -> Self {
        self.0.push(0x80 | register);
        uleb(&mut self.0, factored);
        self
    }
    fn undefined(mut self, register: u64) -> Self {
        self.0.push(0x07);
        uleb(&mut self.0, register);
        self
    }
    fn def_cfa_expression(mut self, expression: &[u8]) -> Self {
        self.0.push(0x0f);
        uleb(&mut self.0, expression.len() as u64);
        self.0.extend_from_slice(expression);
        self
    }
    fn expression(mut self, register: u64, expression: &[u8]) -> Self {
        self.0.push(0x10);
        uleb(&mut self.0, register);
        uleb(&mut self.0, expression.len() as u64);
        self.0.extend_from_slice(expression);
        self
    }
}

/// `DW_OP_bregN offset`.
fn breg(register: u8, offset: i64) -> Vec<u8> {
    let mut out = vec![0x70 + register];
    sleb(&mut out, offset);
    out
}

/// An `.eh_frame` (or `.debug_frame`) section being assembled: absolute 8-byte FDE addresses.
struct Cfi {
    bytes: Vec<u8>,
    debug_frame: bool,
}

impl Cfi {
    fn new(debug_frame: bool) -> Self {
        Self {
            bytes: Vec::new(),
            debug_frame,
        }
    }

    /// Appends an entry: its length, then `body`, padded with `DW_CFA_nop` to 8 bytes.
    fn entry(&mut self, mut body: Vec<u8>) -> usize {
        while !(body.len() + 4).is_multiple_of(8) {
            body.push(0);
        }
        let offset = self.bytes.len();
        self.bytes
            .extend_from_slice(&u32::try_from(body.len()).unwrap().to_le_bytes());
        self.bytes.extend_from_slice(&body);
        offset
    }

    /// A CIE: CFA = rsp+8, return address at CFA-8, `signal` adds the `S` augmentation.
    fn cie(&mut self, signal: bool, extra: &Insns) -> usize {
        let mut body = Vec::new();
        if self.debug_frame {
            body.extend_from_slice(&u32::MAX.to_le_bytes());
            body.extend_from_slice(&[1, 0]); // version, empty augmentation
        } else {
            body.extend_from_slice(&0_u32.to_le_bytes());
            body.push(1);
            body.extend_from_slice(if signal { b"zRS\0" } else { b"zR\0" });
        }
        uleb(&mut body, 1);
        sleb(&mut body, -8);
        body.push(16);
        if !self.debug_frame {
            body.extend_from_slice(&[1, 0x04]); // augmentation data: DW_EH_PE_udata8
        }
        body.extend_from_slice(&Insns::default().def_cfa(7, 8).offset(16, 1).0);
        body.extend_from_slice(&extra.0);
        self.entry(body)
    }

    fn fde(&mut self, cie: usize, start: u64, len: u64, insns: &Insns) -> usize {
        let here = self.bytes.len() + 4;
        let mut body = Vec::new();
        let pointer = if self.debug_frame { cie } else { here - cie };
        body.extend_from_slice(&u32::try_from(pointer).unwrap().to_le_bytes());
        body.extend_from_slice(&start.to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
        if !self.debug_frame {
            body.push(0);
        }
        body.extend_from_slice(&insns.0);
        self.entry(body)
    }

    fn finish(mut self) -> Vec<u8> {
        if !self.debug_frame {
            self.bytes.extend_from_slice(&[0; 4]);
        }
        self.bytes
    }
}

fn build_eh(bytes: &[u8]) -> UnwindTable {
    let table = build_sections(
        Some((bytes, EH_FRAME_ADDRESS)),
        None,
        BASE,
        &Limits::default(),
    )
    .unwrap();
    check_invariants(&table, &Limits::default());
    table
}

fn row(pc: u32, cfa_kind: u8, cfa_offset: i32, rbp_kind: u8, rbp_offset: i16) -> UnwindRow {
    UnwindRow {
        pc,
        cfa_kind,
        rbp_kind,
        rbp_offset,
        cfa_offset,
    }
}

#[test]
fn prologue_epilogue_gap_markers_and_merging() {
    let mut cfi = Cfi::new(false);
    let cie = cfi.cie(false, &Insns::default());
    // push rbp; mov rsp,rbp; ...: the frame-pointer prologue.
    let f = Insns::default()
        .advance(1)
        .def_cfa_offset(16)
        .offset(6, 2)
        .advance(3)
        .def_cfa(6, 16)
        .advance(20)
        .def_cfa(7, 8);
    cfi.fde(cie, 0x1000, 0x30, &f);
    // Right after it, a function with no instructions beyond the CIE's.
    cfi.fde(cie, 0x1030, 0x10, &Insns::default());
    // After a gap, a frame of 64 KiB + 72 (more than an i16).
    cfi.fde(
        cie,
        0x1100,
        0x20,
        &Insns::default().advance(4).def_cfa_offset(65608),
    );
    let table = build_eh(&cfi.finish());
    assert_eq!(
        table.rows,
        vec![
            row(0x0, CFA_RSP_OFFSET, 8, RBP_UNCHANGED, 0),
            row(0x1, CFA_RSP_OFFSET, 16, RBP_AT_CFA_OFFSET, -16),
            row(0x4, CFA_RBP_OFFSET, 16, RBP_AT_CFA_OFFSET, -16),
            row(0x18, CFA_RSP_OFFSET, 8, RBP_AT_CFA_OFFSET, -16),
            // 0x30: the next function's first row (the CIE's), no marker: no gap.
            row(0x30, CFA_RSP_OFFSET, 8, RBP_UNCHANGED, 0),
            row(0x40, CFA_INVALID, 0, 0, 0),
            row(0x100, CFA_RSP_OFFSET, 8, RBP_UNCHANGED, 0),
            row(0x104, CFA_RSP_OFFSET, 65608, RBP_UNCHANGED, 0),
            row(0x120, CFA_INVALID, 0, 0, 0),
        ]
    );
    assert_eq!(table.stats.fdes, 3);
    assert_eq!(table.stats.gap_markers, 2);
    assert_eq!(table.base, BASE);
    // Lookups: exact starts, inside rows, the gap, before and after everything.
    assert_eq!(table.lookup(0x1000).unwrap().cfa_offset, 8);
    assert_eq!(table.lookup(0x1003).unwrap().cfa_offset, 16);
    assert_eq!(table.lookup(0x1017).unwrap().cfa_kind, CFA_RBP_OFFSET);
    assert_eq!(table.lookup(0x10ff).unwrap().cfa_kind, CFA_INVALID);
    assert_eq!(table.lookup(0x111f).unwrap().cfa_offset, 65608);
    assert_eq!(table.lookup(0x5000).unwrap().cfa_kind, CFA_INVALID);
    assert_eq!(table.lookup(0xfff), None);
    assert_eq!(table.lookup(BASE + (1 << 32)), None);
    assert_eq!(table.bytes(), 9 * 12);
}

#[test]
fn expressions_signal_frames_and_the_outermost_frame() {
    let mut cfi = Cfi::new(false);
    let cie = cfi.cie(false, &Insns::default());
    let plt = |threshold: u8| {
        let mut e = breg(7, 8);
        e.extend(breg(16, 0));
        e.extend([0x30 + 15, 0x1a, 0x30 + threshold, 0x2a, 0x33, 0x24, 0x22]);
        e
    };
    let deref = |register: u8, offset: i64, addend: Option<u8>| {
        let mut e = breg(register, offset);
        e.push(0x06);
        if let Some(addend) = addend {
            e.extend([0x23, addend]);
        }
        e
    };
    // PLT, both thresholds.
    cfi.fde(
        cie,
        0x1000,
        0x10,
        &Insns::default().def_cfa_expression(&plt(11)),
    );
    cfi.fde(
        cie,
        0x1010,
        0x10,
        &Insns::default().def_cfa_expression(&plt(10)),
    );
    // gcc's realigned frame: CFA = *(rbp-40), rbp at *(rbp+0).
    let drap = Insns::default()
        .def_cfa_expression(&deref(6, -40, None))
        .expression(6, &breg(6, 0));
    cfi.fde(cie, 0x1020, 0x10, &drap);
    // CFA = *(rsp+152)+8.
    cfi.fde(
        cie,
        0x1030,
        0x10,
        &Insns::default().def_cfa_expression(&deref(7, 152, Some(8))),
    );
    // CFA in r10 (a realigning prologue), and an expression we do not know (uses r9).
    cfi.fde(cie, 0x1040, 0x10, &Insns::default().def_cfa(10, 0));
    let mut r9 = breg(7, 8);
    r9.extend(breg(9, 0));
    r9.extend([0x38, 0x1e, 0x22, 0x06, 0x23, 8]);
    cfi.fde(cie, 0x1050, 0x10, &Insns::default().def_cfa_expression(&r9));
    // `_start`: rip undefined.
    cfi.fde(cie, 0x1060, 0x10, &Insns::default().undefined(16));
    // Return address elsewhere than CFA-8.
    cfi.fde(cie, 0x1070, 0xf, &Insns::default().offset(16, 2));
    // `__restore_rt`, as Debian 12's glibc describes it.
    let signal = cfi.cie(true, &Insns::default());
    let sigcontext = Insns::default()
        .def_cfa_expression(&deref(7, 160, None))
        .expression(6, &breg(7, 120))
        .expression(16, &breg(7, 168));
    cfi.fde(signal, 0x107f, 0x11, &sigcontext);
    // A signal frame of another shape.
    cfi.fde(signal, 0x1090, 0x10, &Insns::default());

    let table = build_eh(&cfi.finish());
    let at = |pc: u64| *table.lookup(pc).unwrap();
    assert_eq!(
        at(0x1005),
        row(0x0, CFA_PLT, UnwindRow::pack_pair(8, 11), 0, 0)
    );
    assert_eq!(at(0x1010).cfa_pair(), (8, 10));
    assert_eq!(
        at(0x1020),
        row(
            0x20,
            CFA_DEREF_RBP,
            UnwindRow::pack_pair(-40, 0),
            RBP_AT_RBP_OFFSET,
            0
        )
    );
    assert_eq!(
        at(0x1030),
        row(0x30, CFA_DEREF_RSP, UnwindRow::pack_pair(152, 8), 0, 0)
    );
    assert_eq!(at(0x1040).cfa_kind, CFA_INVALID);
    assert_eq!(at(0x1050).cfa_kind, CFA_INVALID);
    assert_eq!(at(0x1060).cfa_kind, CFA_END);
    assert_eq!(at(0x1070).cfa_kind, CFA_INVALID);
    assert_eq!(
        at(0x1080),
        row(
            0x7f,
            CFA_SIGNAL,
            UnwindRow::pack_pair(160, 168),
            RBP_AT_RSP_OFFSET,
            120
        )
    );
    assert_eq!(at(0x1090).cfa_kind, CFA_INVALID);
    let invalid = table.stats.invalid;
    assert_eq!(
        (
            invalid.cfa_register,
            invalid.cfa_expression,
            invalid.return_address,
            invalid.signal_frame
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(table.stats.end_rows, 1);
}

#[test]
fn eh_frame_wins_over_debug_frame_and_overlaps_are_dropped() {
    let mut eh = Cfi::new(false);
    let cie = eh.cie(false, &Insns::default());
    eh.fde(
        cie,
        0x1000,
        0x20,
        &Insns::default().advance(1).def_cfa_offset(16),
    );
    // Overlaps the first: dropped.
    eh.fde(cie, 0x1010, 0x20, &Insns::default().def_cfa_offset(99));
    let eh = eh.finish();
    let mut debug = Cfi::new(true);
    let dcie = debug.cie(false, &Insns::default());
    // The same function, described differently: .eh_frame's description stays.
    debug.fde(dcie, 0x1000, 0x20, &Insns::default().def_cfa_offset(48));
    // A function only .debug_frame describes.
    debug.fde(dcie, 0x1040, 0x10, &Insns::default().def_cfa_offset(32));
    let debug = debug.finish();
    let table = build_sections(
        Some((&eh, EH_FRAME_ADDRESS)),
        Some(&debug),
        BASE,
        &Limits::default(),
    )
    .unwrap();
    check_invariants(&table, &Limits::default());
    assert_eq!(table.lookup(0x1001).unwrap().cfa_offset, 16);
    assert_eq!(table.lookup(0x1045).unwrap().cfa_offset, 32);
    assert_eq!(table.lookup(0x1025).unwrap().cfa_kind, CFA_INVALID);
    assert_eq!(table.stats.skipped.overlap, 2);
    assert_eq!(table.stats.debug_frame_fdes, 1);
    assert_eq!(table.stats.fdes, 2);
}

#[test]
fn out_of_range_empty_and_damaged_entries_are_counted() {
    let mut cfi = Cfi::new(false);
    let cie = cfi.cie(false, &Insns::default());
    let first = cfi.fde(cie, 0x1000, 0x10, &Insns::default());
    cfi.fde(cie, 0x10, 0x10, &Insns::default()); // below the base
    cfi.fde(cie, BASE + (1 << 32) - 8, 0x10, &Insns::default()); // past 4 GiB
    cfi.fde(cie, 0x2000, 0, &Insns::default()); // empty
    cfi.fde(first, 0x3000, 0x10, &Insns::default()); // its "CIE" is an FDE
    let bytes = cfi.finish();
    let table = build_eh(&bytes);
    let skipped = table.stats.skipped;
    assert_eq!(
        (skipped.out_of_range, skipped.empty, skipped.parse),
        (2, 1, 1)
    );
    assert_eq!(table.stats.fdes, 1);

    // A length field running past the end: the walk stops, what came before stays.
    let mut cfi = Cfi::new(false);
    let cie = cfi.cie(false, &Insns::default());
    cfi.fde(cie, 0x1000, 0x10, &Insns::default());
    let mut bytes = cfi.finish();
    bytes.truncate(bytes.len() - 4);
    bytes.extend_from_slice(&0x7fff_0000_u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 12]);
    let table = build_eh(&bytes);
    assert_eq!((table.stats.fdes, table.stats.section_errors), (1, 1));

    // Nothing readable at all: an error, not an empty table.
    let garbage = [0xff_u8; 64];
    assert!(matches!(
        build_sections(
            Some((&garbage, EH_FRAME_ADDRESS)),
            None,
            BASE,
            &Limits::default()
        ),
        Err(UnwindError::Cfi(_))
    ));
}

#[test]
fn the_row_limit_is_an_error() {
    let mut cfi = Cfi::new(false);
    let cie = cfi.cie(false, &Insns::default());
    for i in 0..100 {
        cfi.fde(cie, 0x1000 + i * 0x20, 0x10, &Insns::default());
    }
    let bytes = cfi.finish();
    let limits = Limits {
        max_rows: 150,
        ..Limits::default()
    };
    let result = build_sections(Some((&bytes, EH_FRAME_ADDRESS)), None, BASE, &limits);
    assert!(matches!(
        result,
        Err(UnwindError::TooManyRows { limit: 150 })
    ));
}

#[test]
fn huge_cies_shared_by_many_fdes_exhaust_the_work_budget() {
    // A CIE of 1 MiB of DW_CFA_nop runs again for each of its 20,000 FDEs: 20 GiB of work
    // unbounded. The budget stops it after a few FDEs, quickly.
    let mut cfi = Cfi::new(false);
    let cie = cfi.cie(false, &Insns(vec![0; 1 << 20]));
    for i in 0..20_000 {
        cfi.fde(cie, 0x1000 + i * 0x10, 0x10, &Insns::default());
    }
    let bytes = cfi.finish();
    let started = std::time::Instant::now();
    let table = build_eh(&bytes);
    assert!(table.stats.work_exhausted);
    assert!(table.stats.fdes < 100);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn the_search_takes_at_most_the_bpf_step_bound() {
    // The largest table the walker searches, in UNWIND_SEARCH_STEPS halvings, at every edge.
    let rows: Vec<UnwindRow> = (0..UNWIND_MAX_ROWS)
        .map(|i| UnwindRow {
            pc: i * 4,
            cfa_kind: CFA_RSP_OFFSET,
            cfa_offset: i as i32,
            ..UnwindRow::default()
        })
        .collect();
    let table = UnwindTable {
        base: 0,
        rows,
        stats: super::UnwindStats::default(),
    };
    for i in [
        0,
        1,
        2,
        1000,
        UNWIND_MAX_ROWS / 2,
        UNWIND_MAX_ROWS - 2,
        UNWIND_MAX_ROWS - 1,
    ] {
        assert_eq!(table.lookup_offset(i * 4).unwrap().pc, i * 4);
        assert_eq!(table.lookup_offset(i * 4 + 3).unwrap().pc, i * 4);
    }
    assert_eq!(
        table.lookup_offset(u32::MAX).unwrap().pc,
        (UNWIND_MAX_ROWS - 1) * 4
    );
    assert!(1_u64 << UNWIND_SEARCH_STEPS > u64::from(UNWIND_MAX_ROWS));
    assert!(UnwindTable::default().lookup_offset(0).is_none());
}

#[test]
fn pairs_pack_both_signs() {
    for (a, b) in [
        (0, 0),
        (8, 11),
        (-40, 0),
        (160, 168),
        (i16::MIN, i16::MAX),
        (-1, -1),
    ] {
        assert_eq!(
            UnwindRow {
                cfa_offset: UnwindRow::pack_pair(a, b),
                ..UnwindRow::default()
            }
            .cfa_pair(),
            (a, b)
        );
    }
}

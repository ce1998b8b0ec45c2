//! Every row `readelf --debug-dump=frames-interp` prints for Debian's binaries, looked up in our
//! table: the same CFA (register and offset) and the same rbp rule wherever the CFA is rsp or rbp
//! based, END where the return address is undefined, INVALID where the CFA is in another
//! register (deliberate: the walker only tracks rsp, rbp and rip).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use profiler_common::{
    CFA_DEREF_RBP, CFA_DEREF_RSP, CFA_END, CFA_INVALID, CFA_PLT, CFA_RBP_OFFSET, CFA_RSP_OFFSET,
    CFA_SIGNAL, RBP_AT_CFA_OFFSET, RBP_AT_RBP_OFFSET, RBP_AT_RSP_OFFSET, RBP_UNCHANGED,
    RBP_UNSUPPORTED, UnwindRow,
};

use super::debian::{LD_SO, LIBC, LIBSTDCXX, PYTHON};

/// OpenSSL's libcrypto (libssl3, which `openssl` depends on): its hand-written assembly has
/// `*(rsp+a)+b` and `*(rbp+a)+b` CFAs, which the four files above do not.
const LIBCRYPTO: &str = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3";
use crate::unwind::build;

/// One row as readelf prints it: the CFA column and the rbp and return address columns.
#[derive(Debug)]
struct Row {
    loc: u64,
    cfa: String,
    rbp: String,
    ra: String,
}

/// The rows readelf prints for `.eh_frame`, the last one per location in each FDE (a later row
/// at the same location replaces it).
fn readelf_rows(path: &str) -> Vec<Row> {
    let output = Command::new("readelf")
        .args(["--debug-dump=frames-interp", path])
        .output()
        .expect("readelf (binutils) runs");
    // readelf exits 1 after warning about a debug file's NOBITS .eh_frame: judge by its output.
    assert!(!output.stdout.is_empty(), "readelf {path} printed nothing");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut rows = Vec::new();
    let mut fde: Option<(u64, u64)> = None;
    let mut columns: Vec<String> = Vec::new();
    let mut current: BTreeMap<u64, Row> = BTreeMap::new();
    let mut sections = 0;
    for line in text.lines() {
        let tokens = merged_tokens(line);
        if line.starts_with("Contents of the") {
            sections += 1;
            if sections > 1 {
                break; // Only .eh_frame; a debug file's sections may follow.
            }
        } else if tokens.get(3).is_some_and(|t| t == "FDE" || t == "CIE")
            || line.contains("ZERO terminator")
        {
            rows.extend(std::mem::take(&mut current).into_values());
            fde = tokens
                .iter()
                .find_map(|t| t.strip_prefix("pc="))
                .and_then(|range| range.split_once(".."))
                .map(|(a, b)| (hex(a), hex(b)));
        } else if tokens.first().is_some_and(|t| t == "LOC") {
            columns = tokens;
        } else if let (Some((start, end)), Some(loc)) = (fde, tokens.first()) {
            if loc.len() != 16 || !loc.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let column = |name: &str| {
                columns
                    .iter()
                    .position(|c| c == name)
                    .and_then(|i| tokens.get(i))
                    .cloned()
                    .unwrap_or_else(|| "u".to_owned())
            };
            let loc = hex(loc);
            if (start..end).contains(&loc) {
                let row = Row {
                    loc,
                    cfa: tokens[1].clone(),
                    rbp: column("rbp"),
                    ra: column("ra"),
                };
                current.insert(loc, row);
            }
        }
    }
    rows.extend(current.into_values());
    rows
}

/// Whitespace-separated tokens, a register rule like `r9 (r9)` kept as one.
fn merged_tokens(line: &str) -> Vec<String> {
    let mut tokens: Vec<String> = Vec::new();
    for token in line.split_whitespace() {
        match tokens.last_mut() {
            Some(last) if token.starts_with('(') => {
                last.push(' ');
                last.push_str(token);
            }
            _ => tokens.push(token.to_owned()),
        }
    }
    tokens
}

fn hex(text: &str) -> u64 {
    u64::from_str_radix(text, 16).unwrap()
}

/// readelf's `rsp+8`, `rbp-16`: register and offset.
fn register_offset(text: &str) -> Option<(&str, i64)> {
    let at = text.find(['+', '-'])?;
    let (register, offset) = text.split_at(at);
    Some((register, offset.parse().ok()?))
}

/// The rbp rule readelf prints, as our `(rbp_kind, rbp_offset)`; `None` for an expression
/// (readelf prints `exp` without it: either of ours that read memory matches).
fn expected_rbp(text: &str) -> Option<(u8, i16)> {
    match text {
        "u" | "s" => Some((RBP_UNCHANGED, 0)),
        "exp" => None,
        _ => match text.strip_prefix('c').and_then(|o| o.parse::<i16>().ok()) {
            Some(offset) => Some((RBP_AT_CFA_OFFSET, offset)),
            None => Some((RBP_UNSUPPORTED, 0)),
        },
    }
}

/// Agreement of one file's table with readelf's rows.
#[derive(Debug, Default)]
struct Agreement {
    /// Rows with an rsp or rbp CFA: CFA and rbp rule equal.
    register_rows: usize,
    register_agree: usize,
    /// Rows with the CFA in another register: INVALID in ours.
    other_register_rows: usize,
    other_register_agree: usize,
    /// Rows with the return address in a register: INVALID in ours.
    other_ra_rows: usize,
    other_ra_agree: usize,
    /// Rows with an undefined return address: END in ours.
    end_rows: usize,
    end_agree: usize,
    /// Rows with a CFA expression, by our kind.
    expression_kinds: BTreeMap<u8, usize>,
    disagreements: Vec<String>,
}

fn check(path: &str) -> Agreement {
    let table = build(Path::new(path)).unwrap();
    let mut agreement = Agreement::default();
    for row in readelf_rows(path) {
        let ours: UnwindRow = table.lookup(row.loc).copied().unwrap_or_default();
        let ok = if row.ra == "u" {
            agreement.end_rows += 1;
            let ok = ours.cfa_kind == CFA_END;
            agreement.end_agree += usize::from(ok);
            ok
        } else if row.cfa == "exp" {
            *agreement.expression_kinds.entry(ours.cfa_kind).or_default() += 1;
            [
                CFA_PLT,
                CFA_DEREF_RSP,
                CFA_DEREF_RBP,
                CFA_SIGNAL,
                CFA_INVALID,
            ]
            .contains(&ours.cfa_kind)
        } else if row.ra != "c-8" {
            // `__vfork` keeps it in rdi, `__longjmp`'s restored state in rdx.
            agreement.other_ra_rows += 1;
            let ok = ours.cfa_kind == CFA_INVALID;
            agreement.other_ra_agree += usize::from(ok);
            ok
        } else if let Some((register @ ("rsp" | "rbp"), offset)) = register_offset(&row.cfa) {
            agreement.register_rows += 1;
            let kind = if register == "rsp" {
                CFA_RSP_OFFSET
            } else {
                CFA_RBP_OFFSET
            };
            let cfa_ok = ours.cfa_kind == kind && i64::from(ours.cfa_offset) == offset;
            let rbp_ok = match expected_rbp(&row.rbp) {
                Some(rule) => (ours.rbp_kind, ours.rbp_offset) == rule,
                None => [RBP_AT_RSP_OFFSET, RBP_AT_RBP_OFFSET].contains(&ours.rbp_kind),
            };
            agreement.register_agree += usize::from(cfa_ok && rbp_ok);
            cfa_ok && rbp_ok
        } else {
            agreement.other_register_rows += 1;
            let ok = ours.cfa_kind == CFA_INVALID;
            agreement.other_register_agree += usize::from(ok);
            ok
        };
        if !ok {
            agreement
                .disagreements
                .push(format!("{row:?} ours {ours:?}"));
        }
    }
    agreement
}

#[test]
fn rows_agree_with_readelf() {
    for path in [LIBC, LD_SO, PYTHON, LIBSTDCXX, LIBCRYPTO] {
        let a = check(path);
        println!(
            "{path}: readelf agreement: rsp/rbp CFA rows {}/{} ({:.3}%), other-register CFA rows \
             INVALID {}/{}, return-address-in-a-register rows INVALID {}/{}, undefined-rip rows \
             END {}/{}, expression rows by our kind {:?} \
             (1=RSP 3=PLT 4=DEREF_RSP 5=DEREF_RBP 6=SIGNAL 0=INVALID)",
            a.register_agree,
            a.register_rows,
            100.0 * a.register_agree as f64 / a.register_rows.max(1) as f64,
            a.other_register_agree,
            a.other_register_rows,
            a.other_ra_agree,
            a.other_ra_rows,
            a.end_agree,
            a.end_rows,
            a.expression_kinds,
        );
        assert!(
            a.register_rows > 1000 || path == LD_SO,
            "{path}: readelf output not parsed"
        );
        assert!(
            a.disagreements.is_empty(),
            "{path}: {} disagreements, first: {:#?}",
            a.disagreements.len(),
            &a.disagreements[..a.disagreements.len().min(10)]
        );
    }
}

/// The `DW_CFA_def_cfa_expression (DW_OP_bregN (reg): a; DW_OP_deref[; DW_OP_plus_uconst: b])`
/// instructions `readelf --debug-dump=frames` prints, with the location they take effect at
/// (when no other CFA instruction follows at the same location): (location, register, a, b).
fn raw_deref_cfas(path: &str) -> Vec<(u64, String, i64, i64)> {
    let output = Command::new("readelf")
        .args(["--debug-dump=frames", path])
        .output()
        .expect("readelf (binutils) runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut found = BTreeMap::new();
    let mut loc = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.contains(" FDE ") {
            loc = line
                .split_once("pc=")
                .and_then(|(_, range)| range.split_once(".."))
                .map_or(0, |(start, _)| hex(start));
        } else if let Some((_, to)) = line
            .strip_prefix("DW_CFA_advance_loc")
            .and_then(|rest| rest.split_once(" to "))
        {
            loc = hex(to);
        } else if line.starts_with("DW_CFA_def_cfa") || line.starts_with("DW_CFA_restore_state") {
            let deref = line
                .strip_prefix("DW_CFA_def_cfa_expression (DW_OP_breg")
                .and_then(|rest| {
                    let (_, rest) = rest.split_once('(')?;
                    let (register, rest) = rest.split_once("): ")?;
                    let (a, rest) = rest.split_once("; DW_OP_deref")?;
                    let b = match rest {
                        ")" => 0,
                        _ => rest
                            .strip_prefix("; DW_OP_plus_uconst: ")?
                            .strip_suffix(')')?
                            .parse()
                            .ok()?,
                    };
                    Some((register.to_owned(), a.parse().ok()?, b))
                });
            // The last CFA instruction at a location decides its rule.
            found.insert(loc, deref);
        }
    }
    found
        .into_iter()
        .filter_map(|(loc, deref)| deref.map(|(register, a, b)| (loc, register, a, b)))
        .collect()
}

#[test]
fn deref_cfas_agree_with_readelf() {
    let table = build(Path::new(LIBCRYPTO)).unwrap();
    let derefs = raw_deref_cfas(LIBCRYPTO);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (loc, register, a, b) in &derefs {
        let ours = table.lookup(*loc).copied().unwrap_or_default();
        let kind = match register.as_str() {
            "rsp" => CFA_DEREF_RSP,
            "rbp" => CFA_DEREF_RBP,
            _ => CFA_INVALID,
        };
        let (our_a, our_b) = ours.cfa_pair();
        assert_eq!(
            (ours.cfa_kind, i64::from(our_a), i64::from(our_b)),
            (kind, *a, *b),
            "{LIBCRYPTO} at {loc:#x}: readelf {register}: {a}, {b}; ours {ours:?}"
        );
        *kinds.entry(register.clone()).or_default() += 1;
    }
    println!(
        "{LIBCRYPTO}: DEREF CFAs equal to readelf's at their locations, by register: {kinds:?}"
    );
    assert!(kinds.get("rsp").is_some_and(|&n| n > 10), "{kinds:?}");
    assert!(kinds.contains_key("rbp"), "{kinds:?}");
}

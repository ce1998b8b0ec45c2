//! One DWARF call frame row → one `UnwindRow`: the rules the BPF walker can apply (CFA from rsp
//! or rbp, the PLT and `*(reg+a)+b` expressions, the signal frame, the outermost frame), and
//! for anything else an invalid row with the reason.

use gimli::{CfaRule, Expression, Operation, RegisterRule, UnwindSection, UnwindTableRow};
use profiler_common::{
    CFA_DEREF_RBP, CFA_DEREF_RSP, CFA_END, CFA_INVALID, CFA_PLT, CFA_RBP_OFFSET, CFA_RSP_OFFSET,
    CFA_SIGNAL, RBP_AT_CFA_OFFSET, RBP_AT_RBP_OFFSET, RBP_AT_RSP_OFFSET, RBP_UNCHANGED,
    RBP_UNSUPPORTED, UnwindRow,
};

/// The reader over a frame section's bytes.
pub(super) type Slice<'data> = gimli::EndianSlice<'data, gimli::LittleEndian>;

/// DWARF register numbers of the x86-64 psABI.
const RBP: u16 = 6;
const RSP: u16 = 7;
const RIP: u16 = 16;

/// Why a row is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Invalid {
    CfaRegister,
    CfaExpression,
    OffsetRange,
    ReturnAddress,
    SignalFrame,
}

/// A converted row (its `pc` left 0), with why it is invalid when it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Converted {
    pub(super) row: UnwindRow,
    pub(super) invalid: Option<Invalid>,
}

/// What a row's conversion needs besides the row: its section (expressions point into it), the
/// FDE's encoding, whether it is a signal frame (`S` augmentation) and whether its CIE names rip
/// as the return address column.
pub(super) struct FdeContext<'a, Section> {
    pub(super) section: &'a Section,
    pub(super) encoding: gimli::Encoding,
    pub(super) signal: bool,
    pub(super) return_address_is_rip: bool,
}

/// Converts one DWARF row.
pub(super) fn convert<'data, Section, S>(
    fde: &FdeContext<'_, Section>,
    row: &UnwindTableRow<usize, S>,
) -> Converted
where
    Section: UnwindSection<Slice<'data>>,
    S: gimli::UnwindContextStorage<usize>,
{
    match try_convert(fde, row) {
        Ok(row) => Converted { row, invalid: None },
        Err(reason) => Converted {
            // Only the kind: invalid rows with different leftovers must still merge.
            row: UnwindRow {
                cfa_kind: CFA_INVALID,
                ..UnwindRow::default()
            },
            invalid: Some(reason),
        },
    }
}

fn try_convert<'data, Section, S>(
    fde: &FdeContext<'_, Section>,
    row: &UnwindTableRow<usize, S>,
) -> Result<UnwindRow, Invalid>
where
    Section: UnwindSection<Slice<'data>>,
    S: gimli::UnwindContextStorage<usize>,
{
    if !fde.return_address_is_rip {
        return Err(Invalid::ReturnAddress);
    }
    if fde.signal {
        return signal_frame(fde, row).ok_or(Invalid::SignalFrame);
    }
    match row.register(gimli::Register(RIP)) {
        // The outermost frame: `.cfi_undefined rip`. Nothing else about it matters.
        Some(RegisterRule::Undefined) => {
            return Ok(UnwindRow {
                cfa_kind: CFA_END,
                ..UnwindRow::default()
            });
        }
        Some(RegisterRule::Offset(-8)) => {}
        _ => return Err(Invalid::ReturnAddress),
    }
    let (rbp_kind, rbp_offset) = rbp_rule(fde, row.register(gimli::Register(RBP)).as_ref());
    let (cfa_kind, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match register.0 {
                RSP => CFA_RSP_OFFSET,
                RBP => CFA_RBP_OFFSET,
                _ => return Err(Invalid::CfaRegister),
            };
            (
                kind,
                i32::try_from(*offset).map_err(|_| Invalid::OffsetRange)?,
            )
        }
        CfaRule::Expression(expression) => {
            let expression = expression
                .get(fde.section)
                .map_err(|_| Invalid::CfaExpression)?;
            match cfa_expression(&ops(expression, fde.encoding).ok_or(Invalid::CfaExpression)?) {
                Some(CfaExpression::Plt { offset, threshold }) => (
                    CFA_PLT,
                    UnwindRow::pack_pair(small(offset)?, small(threshold)?),
                ),
                Some(CfaExpression::Deref {
                    register,
                    offset,
                    addend,
                }) => (
                    if register == RSP {
                        CFA_DEREF_RSP
                    } else {
                        CFA_DEREF_RBP
                    },
                    UnwindRow::pack_pair(small(offset)?, small(addend)?),
                ),
                None => return Err(Invalid::CfaExpression),
            }
        }
    };
    Ok(UnwindRow {
        pc: 0,
        cfa_kind,
        rbp_kind,
        rbp_offset,
        cfa_offset,
    })
}

/// A signal trampoline (`__restore_rt`): the kernel's `sigcontext` on the stack, CFA =
/// `*(rsp+a)` (the interrupted rsp) and rip at `rsp+b`. Any other shape is not one the walker
/// knows how to apply.
fn signal_frame<'data, Section, S>(
    fde: &FdeContext<'_, Section>,
    row: &UnwindTableRow<usize, S>,
) -> Option<UnwindRow>
where
    Section: UnwindSection<Slice<'data>>,
    S: gimli::UnwindContextStorage<usize>,
{
    let CfaRule::Expression(cfa) = row.cfa() else {
        return None;
    };
    let cfa = ops(cfa.get(fde.section).ok()?, fde.encoding)?;
    let Some(CfaExpression::Deref {
        register: RSP,
        offset: stack_at,
        addend: 0,
    }) = cfa_expression(&cfa)
    else {
        return None;
    };
    let Some(RegisterRule::Expression(rip)) = row.register(gimli::Register(RIP)) else {
        return None;
    };
    let [Op::Breg(RSP, return_at)] = ops(rip.get(fde.section).ok()?, fde.encoding)?[..] else {
        return None;
    };
    let (rbp_kind, rbp_offset) = rbp_rule(fde, row.register(gimli::Register(RBP)).as_ref());
    Some(UnwindRow {
        pc: 0,
        cfa_kind: CFA_SIGNAL,
        rbp_kind,
        rbp_offset,
        cfa_offset: UnwindRow::pack_pair(small(stack_at).ok()?, small(return_at).ok()?),
    })
}

/// Where the caller's rbp is. `None` is the default rule, which for rbp (callee-saved) is
/// "unchanged". Anything the walker cannot read back is `RBP_UNSUPPORTED`.
fn rbp_rule<'data, Section: UnwindSection<Slice<'data>>>(
    fde: &FdeContext<'_, Section>,
    rule: Option<&RegisterRule<usize>>,
) -> (u8, i16) {
    let unsupported = (RBP_UNSUPPORTED, 0);
    match rule {
        None | Some(RegisterRule::SameValue) => (RBP_UNCHANGED, 0),
        Some(&RegisterRule::Offset(offset)) => {
            i16::try_from(offset).map_or(unsupported, |offset| (RBP_AT_CFA_OFFSET, offset))
        }
        Some(RegisterRule::Expression(expression)) => {
            let Some(ops) = expression
                .get(fde.section)
                .ok()
                .and_then(|expression| ops(expression, fde.encoding))
            else {
                return unsupported;
            };
            match ops[..] {
                [Op::Breg(RSP, offset)] => {
                    i16::try_from(offset).map_or(unsupported, |o| (RBP_AT_RSP_OFFSET, o))
                }
                [Op::Breg(RBP, offset)] => {
                    i16::try_from(offset).map_or(unsupported, |o| (RBP_AT_RBP_OFFSET, o))
                }
                _ => unsupported,
            }
        }
        Some(_) => unsupported,
    }
}

/// The CFA expressions the walker applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CfaExpression {
    /// `rsp + offset`, plus 8 when `(rip & 15) >= threshold`.
    Plt { offset: i64, threshold: i64 },
    /// `*(register + offset) + addend`, register rsp or rbp.
    Deref {
        register: u16,
        offset: i64,
        addend: i64,
    },
}

/// Recognises glibc's PLT expression (`DW_OP_breg7 a; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and;
/// DW_OP_litT; DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`) and `DW_OP_breg6|7 a; DW_OP_deref
/// [; DW_OP_plus_uconst b]`.
fn cfa_expression(ops: &[Op]) -> Option<CfaExpression> {
    match *ops {
        [
            Op::Breg(RSP, offset),
            Op::Breg(RIP, 0),
            Op::Lit(15),
            Op::And,
            Op::Lit(threshold),
            Op::Ge,
            Op::Lit(3),
            Op::Shl,
            Op::Plus,
        ] => Some(CfaExpression::Plt {
            offset,
            threshold: i64::try_from(threshold).ok()?,
        }),
        [Op::Breg(register @ (RSP | RBP), offset), Op::Deref] => Some(CfaExpression::Deref {
            register,
            offset,
            addend: 0,
        }),
        [
            Op::Breg(register @ (RSP | RBP), offset),
            Op::Deref,
            Op::PlusConstant(addend),
        ] => Some(CfaExpression::Deref {
            register,
            offset,
            addend: i64::try_from(addend).ok()?,
        }),
        _ => None,
    }
}

/// The operations of an expression we match on; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Breg(u16, i64),
    /// A plain 8-byte `DW_OP_deref`.
    Deref,
    PlusConstant(u64),
    Lit(u64),
    And,
    Ge,
    Shl,
    Plus,
    Other,
}

/// Longest expression we look at: the PLT one has 9 operations.
const MAX_OPS: usize = 9;

/// The expression's operations, `None` when it does not parse or is longer than any we match.
fn ops(expression: Expression<Slice<'_>>, encoding: gimli::Encoding) -> Option<Vec<Op>> {
    let mut out = Vec::with_capacity(MAX_OPS);
    let mut iter = expression.operations(encoding);
    while let Some(operation) = iter.next().ok()? {
        if out.len() == MAX_OPS {
            return None;
        }
        out.push(match operation {
            Operation::RegisterOffset {
                register,
                offset,
                base_type,
            } if base_type.0 == 0 => Op::Breg(register.0, offset),
            Operation::Deref {
                base_type,
                size: 8,
                space: false,
            } if base_type.0 == 0 => Op::Deref,
            Operation::PlusConstant { value } => Op::PlusConstant(value),
            Operation::UnsignedConstant { value } => Op::Lit(value),
            Operation::And => Op::And,
            Operation::Ge => Op::Ge,
            Operation::Shl => Op::Shl,
            Operation::Plus => Op::Plus,
            _ => Op::Other,
        });
    }
    Some(out)
}

/// A constant that must fit one half of a packed `cfa_offset`.
fn small(value: i64) -> Result<i16, Invalid> {
    i16::try_from(value).map_err(|_| Invalid::OffsetRange)
}

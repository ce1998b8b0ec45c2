//! What the table builder needs from an ELF file: its frame sections' bytes and addresses, the
//! addresses their pointer encodings are relative to, and the table's base.

use object::{Object as _, ObjectSection as _, ObjectSegment as _};

use super::{Limits, UnwindError};

/// A frame section: its bytes and its virtual address.
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameSection<'data> {
    pub(super) data: &'data [u8],
    pub(super) address: u64,
}

/// The call frame information of one file, ready for the builder.
#[derive(Debug, Clone, Copy)]
pub(super) struct CfiInput<'data> {
    pub(super) eh_frame: Option<FrameSection<'data>>,
    pub(super) debug_frame: Option<FrameSection<'data>>,
    /// Addresses `.eh_frame` pointers may be encoded relative to (`DW_EH_PE_textrel`,
    /// `DW_EH_PE_datarel`); 0 when the file has no such section.
    pub(super) text: u64,
    pub(super) got: u64,
    pub(super) eh_frame_hdr: u64,
    /// The table's base: the lowest executable `PT_LOAD` virtual address.
    pub(super) base: u64,
    /// The file has a `.debug_frame`, compressed, that was left out.
    pub(super) compressed_debug_frame: bool,
}

/// Reads the call frame information of `file`: an x86-64 executable or shared object with an
/// executable segment and `.eh_frame` or `.debug_frame`.
pub(super) fn cfi_input<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    limits: &Limits,
) -> Result<CfiInput<'data>, UnwindError> {
    if file.architecture() != object::Architecture::X86_64 {
        return Err(UnwindError::Architecture(format!(
            "{:?}",
            file.architecture()
        )));
    }
    match file.kind() {
        object::ObjectKind::Executable | object::ObjectKind::Dynamic => {}
        kind => return Err(UnwindError::Kind(format!("{kind:?}"))),
    }
    let base = file
        .segments()
        .filter(|segment| {
            matches!(segment.flags(),
                object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0)
        })
        .map(|segment| segment.address())
        .min()
        .ok_or(UnwindError::NoExecutableSegment)?;
    let address_of = |name: &str| file.section_by_name(name).map_or(0, |s| s.address());
    let eh_frame = frame_section(file, ".eh_frame", limits)?;
    let debug_frame = frame_section(file, ".debug_frame", limits)?;
    if eh_frame.is_none() && debug_frame.is_none() {
        return Err(UnwindError::NoUnwindInfo);
    }
    Ok(CfiInput {
        eh_frame: eh_frame.and_then(Frame::section),
        debug_frame: debug_frame.and_then(Frame::section),
        text: address_of(".text"),
        got: address_of(".got"),
        eh_frame_hdr: address_of(".eh_frame_hdr"),
        base,
        compressed_debug_frame: matches!(debug_frame, Some(Frame::Compressed)),
    })
}

/// A frame section as found in the file.
#[derive(Clone, Copy)]
enum Frame<'data> {
    Present(FrameSection<'data>),
    /// Compressed (`SHF_COMPRESSED`): reading it would need a decompressor; left out.
    Compressed,
}

impl<'data> Frame<'data> {
    fn section(self) -> Option<FrameSection<'data>> {
        match self {
            Frame::Present(section) => Some(section),
            Frame::Compressed => None,
        }
    }
}

/// The section `name` with its bytes, `None` when the file has none or it holds no bytes (a
/// `NOBITS` `.eh_frame` in a debug file).
fn frame_section<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    name: &'static str,
    limits: &Limits,
) -> Result<Option<Frame<'data>>, UnwindError> {
    let Some(section) = file.section_by_name(name) else {
        return Ok(None);
    };
    if section.size() > limits.max_section_bytes {
        return Err(UnwindError::SectionTooLarge {
            section: name,
            size: section.size(),
            limit: limits.max_section_bytes,
        });
    }
    let range = section
        .compressed_file_range()
        .map_err(|source| UnwindError::Section {
            section: name,
            source,
        })?;
    if range.format != object::CompressionFormat::None {
        return Ok(Some(Frame::Compressed));
    }
    let data = section.data().map_err(|source| UnwindError::Section {
        section: name,
        source,
    })?;
    Ok((!data.is_empty()).then_some(Frame::Present(FrameSection {
        data,
        address: section.address(),
    })))
}

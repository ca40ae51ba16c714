//! The source image indexed once for every chunk of a `zstd-patch` delta.
//!
//! `zstd --patch-from` semantics with a per-frame reference prefix (`ZSTD_CCtx_refPrefix`)
//! re-index the whole source before every frame, and only its long-distance matcher (LDM)
//! sees more than the source's last tens of MiB. Measured on two Debian arm64 root
//! filesystems one security update apart (359 MB uncompressed erofs, 43 chunks of 8 MiB):
//! 1.1 s of each chunk's 1.1 s went to re-indexing, and at levels ≥ 16 zstd's optimal
//! parsers took almost none of LDM's matches (chunk 21: 2.5 KB at level 12, 945 KB at
//! level 19), so `--level 19` made a delta 2.4× bigger than level 12.
//!
//! Here the source is digested once into a zstd dictionary (`ZSTD_CDict`) that
//! *references* the mapped source (no copy) as raw content, with hash and chain tables
//! large enough to index all of it. Every chunk's context attaches to it
//! (`ZSTD_dictForceAttach`) instead of copying or rebuilding tables, so a chunk costs only
//! its own compression, and the chunk encoders on several threads share one dictionary.
//! A raw-content dictionary is, to the decoder, exactly the reference prefix it always
//! used: the frames decode with `ZSTD_DCtx_refPrefix(source)` as before, so the payload
//! format did not change.
//!
//! This is the codec's only `unsafe` code: the zstd-safe crate cannot build a dictionary
//! by reference with explicit parameters, so it calls zstd's advanced API directly.

use std::ffi::CStr;
use std::io;
use std::marker::PhantomData;
use std::ptr::NonNull;

use zstd::zstd_safe::zstd_sys as sys;

/// Upper bounds on the dictionary's tables (4 bytes per entry, plus a tag byte per hash
/// entry for the row-based finder of levels 5-15): 512 MiB of hash entries and 512 MiB
/// of chains, so the builder's memory stays around 1 GiB plus the two images whatever
/// their size.
const MAX_HASH_LOG: u32 = 27;
const MAX_CHAIN_LOG: u32 = 27;

fn zstd_err(code: usize) -> io::Error {
    // SAFETY: ZSTD_getErrorName returns a static NUL-terminated string for any code.
    let name = unsafe { CStr::from_ptr(sys::ZSTD_getErrorName(code)) };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("zstd: {}", name.to_string_lossy()),
    )
}

fn check(code: usize) -> io::Result<usize> {
    // SAFETY: a pure function of the code.
    if unsafe { sys::ZSTD_isError(code) } != 0 {
        Err(zstd_err(code))
    } else {
        Ok(code)
    }
}

/// Compression parameters for chunks of `chunk` bytes against a source of `source_len`
/// bytes at `level`, with the window `window_log` that reaches over the whole source.
///
/// zstd's table for the level gives the search effort; the tables are then widened so
/// that the dictionary indexes the whole source: one hash entry per source byte (up to
/// [`MAX_HASH_LOG`]), because the row-based finder (levels 5-15) keeps only the newest
/// entries of each row, so a table smaller than the source forgets its beginning.
/// Measured at level 12: the profile's 74 MB lz4hc pair gave 19.2 MB with 2^24 entries
/// and 60 KB with 2^26; the 163 MB lz4hc Debian pair 48.7 MB with 2^25 and 9.9 MB with
/// 2^27. Two strategies are replaced:
/// the fast ones by `greedy`, because their dictionaries index at most 16 MiB; and
/// `btlazy2` (levels 13-15) by `lazy2`, because on the 359 MB pair its binary-tree index
/// took 170 s to build and still found fewer matches than level 12's `lazy2` (6.25 MB
/// against 6.13 MB), while `lazy2` with level 15's search took 8.6 s for 6.13 MB. The
/// optimal parsers (levels 16+) stay: on the 359 MB pair level 19 made 5.41 MB in 213 s
/// against level 12's 5.77 MB in 12.5 s, but on the 163 MB lz4hc pair 9.97 MB against
/// 9.92 MB, so above level 12 `zstd_patch::encode` keeps each chunk's smaller frame.
fn parameters(
    level: i32,
    source_len: u64,
    chunk: u32,
    window_log: u32,
) -> Vec<(sys::ZSTD_cParameter, i32)> {
    use sys::ZSTD_cParameter as P;
    use sys::ZSTD_strategy as S;
    // SAFETY: a pure function of its arguments.
    let cp = unsafe { sys::ZSTD_getCParams(level, chunk as u64, source_len as usize) };
    let source_log = 64 - source_len.max(1).leading_zeros();
    let hash_log = cp.hashLog.max(source_log.min(MAX_HASH_LOG));
    let chain_log = cp
        .chainLog
        .max(source_log.saturating_sub(2).min(MAX_CHAIN_LOG));
    let strategy = match cp.strategy {
        S::ZSTD_fast | S::ZSTD_dfast => S::ZSTD_greedy,
        S::ZSTD_btlazy2 => S::ZSTD_lazy2,
        other => other,
    } as i32;
    vec![
        (P::ZSTD_c_compressionLevel, level),
        (P::ZSTD_c_windowLog, window_log as i32),
        (P::ZSTD_c_hashLog, hash_log as i32),
        (P::ZSTD_c_chainLog, chain_log as i32),
        (P::ZSTD_c_searchLog, cp.searchLog as i32),
        (P::ZSTD_c_minMatch, cp.minMatch as i32),
        (P::ZSTD_c_targetLength, cp.targetLength as i32),
        (P::ZSTD_c_strategy, strategy),
        // The dictionary indexes the whole source; LDM would add nothing but its tables
        // (zstd enables it by itself for the optimal parsers with a large window).
        (
            P::ZSTD_c_enableLongDistanceMatching,
            sys::ZSTD_ParamSwitch_e::ZSTD_ps_disable as i32,
        ),
        (P::ZSTD_c_contentSizeFlag, 1),
        (P::ZSTD_c_checksumFlag, 0), // the manifest's digests cover payload and image
        // ZSTD_c_forceAttachDict: use the dictionary's tables in place, never copy them.
        (
            P::ZSTD_c_experimentalParam4,
            sys::ZSTD_dictAttachPref_e::ZSTD_dictForceAttach as i32,
        ),
    ]
}

/// A `ZSTD_CCtx_params` holding `params`, freed on drop.
struct CCtxParams(NonNull<sys::ZSTD_CCtx_params>);

impl CCtxParams {
    fn new(params: &[(sys::ZSTD_cParameter, i32)]) -> io::Result<Self> {
        // SAFETY: allocation; null is checked.
        let raw = NonNull::new(unsafe { sys::ZSTD_createCCtxParams() })
            .ok_or_else(|| io::Error::other("zstd: out of memory"))?;
        let this = CCtxParams(raw);
        for &(param, value) in params {
            // SAFETY: `this.0` is a live params object.
            check(unsafe { sys::ZSTD_CCtxParams_setParameter(this.0.as_ptr(), param, value) })?;
        }
        Ok(this)
    }
}

impl Drop for CCtxParams {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createCCtxParams, freed once.
        unsafe { sys::ZSTD_freeCCtxParams(self.0.as_ptr()) };
    }
}

/// The source image, digested once; borrowed by every [`ChunkEncoder`].
pub(crate) struct SourceDict<'a> {
    cdict: NonNull<sys::ZSTD_CDict>,
    params: CCtxParams,
    /// The dictionary references the source's bytes; they must outlive it.
    _source: PhantomData<&'a [u8]>,
}

// SAFETY: a CDict is read-only once created; zstd documents that one may be used by
// several compression contexts on several threads at once. The params object is only
// read (applied to new contexts) after construction.
unsafe impl Send for SourceDict<'_> {}
unsafe impl Sync for SourceDict<'_> {}

impl<'a> SourceDict<'a> {
    /// Indexes `source` for chunks of `chunk` bytes at `level`, with frames whose window
    /// is `2^window_log`. Takes one pass over the source (seconds per 100 MB at the
    /// default level, minutes at 19).
    pub(crate) fn new(
        source: &'a [u8],
        level: i32,
        chunk: u32,
        window_log: u32,
    ) -> io::Result<Self> {
        let params = CCtxParams::new(&parameters(level, source.len() as u64, chunk, window_log))?;
        let no_allocator = sys::ZSTD_customMem {
            customAlloc: None,
            customFree: None,
            opaque: std::ptr::null_mut(),
        };
        // SAFETY: `source` outlives the dictionary (the lifetime on `SourceDict`), and
        // ZSTD_dlm_byRef makes zstd keep only a pointer to it.
        let cdict = unsafe {
            sys::ZSTD_createCDict_advanced2(
                source.as_ptr().cast(),
                source.len(),
                sys::ZSTD_dictLoadMethod_e::ZSTD_dlm_byRef,
                sys::ZSTD_dictContentType_e::ZSTD_dct_rawContent,
                params.0.as_ptr(),
                no_allocator,
            )
        };
        let cdict = NonNull::new(cdict)
            .ok_or_else(|| io::Error::other("zstd could not index the delta source"))?;
        Ok(SourceDict {
            cdict,
            params,
            _source: PhantomData,
        })
    }
}

impl Drop for SourceDict<'_> {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createCDict_advanced2, freed once, after every encoder
        // that borrowed it is gone (their borrow of `self`).
        unsafe { sys::ZSTD_freeCDict(self.cdict.as_ptr()) };
    }
}

/// A compression context that encodes chunks as frames against a [`SourceDict`].
pub(crate) struct ChunkEncoder<'d, 'a> {
    cctx: NonNull<sys::ZSTD_CCtx>,
    dict: &'d SourceDict<'a>,
}

// SAFETY: the context is used by one thread at a time (`&mut self`); the dictionary it
// points to is Sync.
unsafe impl Send for ChunkEncoder<'_, '_> {}

impl<'d, 'a> ChunkEncoder<'d, 'a> {
    pub(crate) fn new(dict: &'d SourceDict<'a>) -> io::Result<Self> {
        // SAFETY: allocation; null is checked.
        let cctx = NonNull::new(unsafe { sys::ZSTD_createCCtx() })
            .ok_or_else(|| io::Error::other("zstd: out of memory"))?;
        let encoder = ChunkEncoder { cctx, dict };
        // SAFETY: both objects are live.
        check(unsafe {
            sys::ZSTD_CCtx_setParametersUsingCCtxParams(cctx.as_ptr(), dict.params.0.as_ptr())
        })?;
        Ok(encoder)
    }

    /// Replaces `frame` with one zstd frame holding `chunk`, whose matches may reach into
    /// the whole source.
    pub(crate) fn encode(&mut self, chunk: &[u8], frame: &mut Vec<u8>) -> io::Result<()> {
        let bound = zstd::zstd_safe::compress_bound(chunk.len());
        frame.clear();
        frame.reserve(bound);
        // SAFETY: the dictionary outlives this encoder (borrow); the output pointer has
        // `bound` writable bytes of capacity, and the length is set to what zstd wrote.
        unsafe {
            check(sys::ZSTD_CCtx_refCDict(
                self.cctx.as_ptr(),
                self.dict.cdict.as_ptr(),
            ))?;
            let written = check(sys::ZSTD_compress2(
                self.cctx.as_ptr(),
                frame.as_mut_ptr().cast(),
                frame.capacity(),
                chunk.as_ptr().cast(),
                chunk.len(),
            ))?;
            frame.set_len(written);
        }
        Ok(())
    }
}

impl Drop for ChunkEncoder<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: created by ZSTD_createCCtx, freed once.
        unsafe { sys::ZSTD_freeCCtx(self.cctx.as_ptr()) };
    }
}

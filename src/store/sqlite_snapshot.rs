//! The rows of recent hot reads on SQLite, kept for as long as no transaction has been
//! committed to the database since they were read, by any connection of any process.
//!
//! A hot read costs a read transaction: locks on the WAL index (`fcntl` calls) and a
//! b-tree descent, most of an app-password login's CPU time. Whether anything was
//! committed since a row was read is cheaper to learn: every commit in WAL mode rewrites
//! the header at the start of the `-shm` file (its frame count, its change counter and,
//! when the log restarts, its salts). This module maps that header, as SQLite itself maps
//! the file, and reads its 96 bytes before every hot read (no system call; a `pread` of
//! them cost 8% of an app-password login): while it is the same as when a row was read, no
//! committed change can be missing from the row, so the row is used again; when it differs,
//! every kept row is dropped and read again. A revocation made by the CLI or by another
//! daemon is committed, so it rewrites the header, so the very next login reads the row
//! anew. What is kept is the row, never a verdict: every login is still decided afresh
//! from it, at the current time.
//!
//! The header's layout is SQLite's documented WAL-index format: two copies of a 48-byte
//! header, written second copy first; a reader that finds them different caught a writer
//! half-way and, like SQLite itself, does not trust either. Anything unexpected (no `-shm`
//! file, another version number, a short read) turns the snapshot off for that read, and
//! the read goes to the database as it would without this module.
//!
//! The `-shm` file is truncated or deleted only by the first connection to open it or the
//! last to close, in any process; the watch holds a connection of its own open for as long
//! as it maps the file, so the file it reads is always the one SQLite writes, and it is
//! never shortened under the mapping (which SQLite's own mapping of it could not survive
//! either).

use std::any::Any;
use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use super::param::Param;

/// What the WAL index says about the last commit: one header copy.
pub(super) type Generation = [u8; HEADER_BYTES];

const HEADER_BYTES: usize = 48;
/// The WAL-index format version SQLite writes since 3.7.0.
const WAL_INDEX_VERSION: u32 = 3_007_000;
/// Offset of the "initialised" flag within a header copy.
const IS_INIT: usize = 12;

/// Rows kept at most; past it the snapshot starts again empty (a spray of unknown names
/// costs reads, not memory).
const MAX_ROWS: usize = 8192;

/// The generation both header copies agree on, or `None` if they do not (a commit is being
/// written), the index is not initialised, or its version is not one this reader knows.
pub(super) fn generation(index_start: &[u8; 2 * HEADER_BYTES]) -> Option<Generation> {
    let (first, second) = index_start.split_at(HEADER_BYTES);
    let version = u32::from_ne_bytes([first[0], first[1], first[2], first[3]]);
    if first != second || version != WAL_INDEX_VERSION || first[IS_INIT] == 0 {
        return None;
    }
    first.try_into().ok()
}

/// The smallest WAL index SQLite writes: one 32 KiB region.
const MIN_INDEX_BYTES: u64 = 32 * 1024;

/// Both header copies, mapped read-only and shared from the `-shm` file.
struct MappedHeader {
    start: NonNull<AtomicU32>,
}

// SAFETY: the mapping is only ever read, with atomic loads, and lives until `drop`.
unsafe impl Send for MappedHeader {}
// SAFETY: as above; concurrent atomic loads are sound.
unsafe impl Sync for MappedHeader {}

const MAPPED_WORDS: usize = 2 * HEADER_BYTES / 4;

impl MappedHeader {
    fn map(shm: &File) -> Option<MappedHeader> {
        // A shorter file is not (yet) a WAL index, and reading a mapping past the end of
        // its file faults.
        if shm.metadata().ok()?.len() < MIN_INDEX_BYTES {
            return None;
        }
        let length = NonZeroUsize::new(2 * HEADER_BYTES)?;
        // SAFETY: a new read-only shared mapping of an open file at least `length` long, at
        // an address the kernel chooses; nothing else refers to it.
        let start = unsafe {
            mmap(
                None,
                length,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                shm,
                0,
            )
        }
        .ok()?;
        Some(MappedHeader {
            start: start.cast(),
        })
    }

    /// Copy one, then copy two: the order SQLite's own readers use, the reverse of the
    /// order its writers write them, so a commit half-written shows as two copies that
    /// differ.
    fn read(&self) -> [u8; 2 * HEADER_BYTES] {
        let mut out = [0u8; 2 * HEADER_BYTES];
        for (i, bytes) in out.chunks_exact_mut(4).enumerate() {
            if i == MAPPED_WORDS / 2 {
                fence(Ordering::Acquire);
            }
            // SAFETY: `i` < MAPPED_WORDS, so the word lies inside the mapping, which is
            // page-aligned (every word aligned) and lives as long as `self`. Other
            // processes write it, hence an atomic load.
            let word = unsafe { &*self.start.as_ptr().add(i) }.load(Ordering::Acquire);
            bytes.copy_from_slice(&word.to_ne_bytes());
        }
        out
    }
}

impl Drop for MappedHeader {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made, of this length, not used after this.
        let _ = unsafe { munmap(self.start.cast(), 2 * HEADER_BYTES) };
    }
}

/// Reads the WAL-index header of one database.
struct CommitWatch {
    // Dropped before the pin: the file is not shortened while it is mapped.
    header: MappedHeader,
    /// Keeps the `-shm` file from being truncated or replaced while it is mapped.
    _pin: Mutex<rusqlite::Connection>,
}

impl CommitWatch {
    /// `pin` must have read from the database already, so that its WAL index exists.
    fn open(database: &Path, pin: rusqlite::Connection) -> Option<CommitWatch> {
        let mut shm_path = database.as_os_str().to_owned();
        shm_path.push("-shm");
        let shm = File::open(PathBuf::from(shm_path)).ok()?;
        Some(CommitWatch {
            header: MappedHeader::map(&shm)?,
            _pin: Mutex::new(pin),
        })
    }

    fn generation(&self) -> Option<Generation> {
        generation(&self.header.read())
    }
}

/// Which read a kept row answers: the statement's text and the values bound to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct ReadKey {
    sql: (usize, usize),
    params: Vec<u8>,
}

impl ReadKey {
    /// Statements are told apart by where their text lives: the hot reads are constants,
    /// and two different texts never share an address and a length.
    pub(super) fn new(sql: &'static str, params: &[Param<'_>]) -> ReadKey {
        let mut bytes = Vec::with_capacity(64);
        for param in params {
            encode(param, &mut bytes);
        }
        ReadKey {
            sql: (sql.as_ptr() as usize, sql.len()),
            params: bytes,
        }
    }
}

/// An unambiguous encoding: a tag, then a length-prefixed text or a fixed-size integer.
fn encode(param: &Param<'_>, out: &mut Vec<u8>) {
    let mut text = |tag: u8, s: &str| {
        out.push(tag);
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    match param {
        Param::Text(s) | Param::OptText(Some(s)) => text(b't', s),
        Param::OwnedText(s) => text(b't', s),
        Param::OptText(None) | Param::OptInt(None) => out.push(b'n'),
        Param::Int(i) | Param::OptInt(Some(i)) => {
            out.push(b'i');
            out.extend_from_slice(&i.to_le_bytes());
        }
    }
}

type KeptRow = Box<dyn Any + Send + Sync>;

struct Kept {
    generation: Option<Generation>,
    rows: HashMap<ReadKey, KeptRow>,
}

/// The kept rows of one database and the watch that says when they are stale.
pub(super) struct Snapshot {
    watch: Mutex<Option<CommitWatch>>,
    kept: Mutex<Kept>,
}

impl Snapshot {
    pub(super) fn new() -> Snapshot {
        Snapshot {
            watch: Mutex::new(None),
            kept: Mutex::new(Kept {
                generation: None,
                rows: HashMap::new(),
            }),
        }
    }

    /// Starts watching `database` through `pin` (a connection that has read from it), if
    /// not watching already; gives `pin` back if it is not needed.
    pub(super) fn watch(
        &self,
        database: &Path,
        pin: rusqlite::Connection,
    ) -> Option<rusqlite::Connection> {
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        if watch.is_some() {
            return Some(pin);
        }
        *watch = CommitWatch::open(database, pin);
        None
    }

    pub(super) fn is_watching(&self) -> bool {
        self.watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// The database's generation now, or `None` when it cannot be known (then nothing kept
    /// may be used, and nothing read may be kept).
    pub(super) fn generation(&self) -> Option<Generation> {
        let watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        watch.as_ref()?.generation()
    }

    /// The row kept for `key` if it was read at `generation`; a newer generation drops
    /// every kept row.
    pub(super) fn get<T: Clone + 'static>(
        &self,
        generation: Generation,
        key: &ReadKey,
    ) -> Option<T> {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.generation != Some(generation) {
            kept.rows.clear();
            kept.generation = Some(generation);
            return None;
        }
        kept.rows.get(key)?.downcast_ref::<T>().cloned()
    }

    /// Keeps `row`, read in a transaction that began after `generation` was read, unless
    /// the generation has moved on since.
    pub(super) fn keep<T: Send + Sync + 'static>(
        &self,
        generation: Generation,
        key: ReadKey,
        row: T,
    ) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.generation != Some(generation) {
            return;
        }
        if kept.rows.len() >= MAX_ROWS {
            kept.rows.clear();
        }
        kept.rows.insert(key, Box::new(row));
    }

    /// Forgets every row and stops watching (the store is closing).
    pub(super) fn clear(&self) {
        *self.watch.lock().unwrap_or_else(PoisonError::into_inner) = None;
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.rows.clear();
        kept.generation = None;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn header(change: u8) -> [u8; 2 * HEADER_BYTES] {
        let mut copy = [0u8; HEADER_BYTES];
        copy[..4].copy_from_slice(&WAL_INDEX_VERSION.to_ne_bytes());
        copy[8] = change;
        copy[IS_INIT] = 1;
        let mut both = [0u8; 2 * HEADER_BYTES];
        both[..HEADER_BYTES].copy_from_slice(&copy);
        both[HEADER_BYTES..].copy_from_slice(&copy);
        both
    }

    #[test]
    fn a_header_is_trusted_only_when_both_copies_agree_and_it_is_initialised() {
        assert!(generation(&header(1)).is_some());
        assert_ne!(generation(&header(1)), generation(&header(2)));

        let mut torn = header(1);
        torn[HEADER_BYTES + 8] = 2;
        assert_eq!(generation(&torn), None, "a commit half-written");

        let mut uninitialised = header(1);
        uninitialised[IS_INIT] = 0;
        uninitialised[HEADER_BYTES + IS_INIT] = 0;
        assert_eq!(generation(&uninitialised), None);

        let mut other_version = header(1);
        other_version[0] ^= 1;
        other_version[HEADER_BYTES] ^= 1;
        assert_eq!(generation(&other_version), None);
        assert_eq!(generation(&[0; 2 * HEADER_BYTES]), None);
    }

    #[test]
    fn read_keys_tell_parameters_apart_even_where_their_texts_run_together() {
        const SQL: &str = "SELECT 1";
        let key = |params: &[Param<'_>]| ReadKey::new(SQL, params);
        assert_eq!(key(&["a".into()]), key(&[Param::OwnedText("a".into())]));
        assert_ne!(
            key(&["ab".into(), "c".into()]),
            key(&["a".into(), "bc".into()])
        );
        assert_ne!(key(&[Param::OptText(None)]), key(&["".into()]));
        assert_ne!(key(&[Param::Int(1)]), key(&["1".into()]));
        assert_ne!(key(&["a".into()]), ReadKey::new("SELECT 2", &["a".into()]));
    }

    #[test]
    fn a_spray_of_names_keeps_at_most_max_rows() {
        let snapshot = Snapshot::new();
        let now = generation(&header(1)).unwrap();
        let key = |i: usize| ReadKey::new("SELECT 1", &[Param::OwnedText(format!("u{i}"))]);
        assert_eq!(snapshot.get::<Option<i64>>(now, &key(0)), None);
        for i in 0..3 * MAX_ROWS {
            snapshot.keep(now, key(i), None::<i64>);
            let kept = snapshot.kept.lock().unwrap().rows.len();
            assert!(kept <= MAX_ROWS, "{kept} rows kept after {i} names");
        }
        let last = 3 * MAX_ROWS - 1;
        assert_eq!(
            snapshot.get::<Option<i64>>(now, &key(last)),
            Some(None),
            "the latest names are still kept"
        );
    }

    #[test]
    fn a_new_generation_drops_every_kept_row() {
        let snapshot = Snapshot::new();
        let (one, two) = (
            generation(&header(1)).unwrap(),
            generation(&header(2)).unwrap(),
        );
        let key = ReadKey::new("SELECT 1", &["a".into()]);
        assert_eq!(snapshot.get::<i64>(one, &key), None);
        snapshot.keep(one, key.clone(), 7_i64);
        assert_eq!(snapshot.get::<i64>(one, &key), Some(7));
        assert_eq!(snapshot.get::<String>(one, &key), None, "another type");

        assert_eq!(snapshot.get::<i64>(two, &key), None, "a commit came");
        snapshot.keep(one, key.clone(), 8_i64);
        assert_eq!(
            snapshot.get::<i64>(two, &key),
            None,
            "a row read before the commit is not kept after it"
        );
    }
}

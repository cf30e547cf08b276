//! Images pushed at run time: the image store, the transfer that fills it, and `swap`.
//!
//! The store is memory the plan reserved for it ([`crate::partition::Owner::ImageStore`]),
//! outside every instance's region and off the manager's heap. An image is written there chunk
//! by chunk ([`crate::transfer`]); at `#end` its SHA-256 is compared with the one announced and
//! it goes through the same checks a boot-bundle image does at boot (`loader::plan` against
//! the instance's load area, or the bzImage header and placement checks for Linux). Only then
//! is it kept as the instance's next image. Nothing a sender transmits reaches an instance's
//! memory before `swap`; a refused or abandoned transfer frees its room in the store and
//! changes nothing else.
//!
//! Each instance runs its current image (the boot bundle's, or a stored one) and may have a
//! `next` (pushed, not yet swapped in) and a `previous` (what ran before the last swap). A
//! stored image nobody refers to any more is freed.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::bundle::Protocol;
use crate::lifecycle::State;
use crate::memmap::Range;
use crate::transfer::{self, Chunks, DataLine, Reply, CHUNK};

use super::error::{StartError, StopError};
use super::events::Event;
use super::machine::Machine;
use super::Supervisor;

/// Where an instance's image comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// The boot bundle's file named in the manifest.
    Bundle,
    /// An image pushed at run time, by its id in the store.
    Stored(u32),
}

/// One image in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    pub id: u32,
    /// The instance it was pushed for.
    pub instance: String,
    /// Byte offset in the store.
    pub offset: usize,
    pub size: usize,
    pub sha256: [u8; 32],
    /// When it was kept (µs since the manager started); 0 while it is still arriving.
    pub kept_us: u64,
}

/// The image store over the memory the plan reserved for it.
pub struct ImageStore<'a> {
    buf: &'a mut [u8],
    /// Its physical range (for `images` and the report).
    pub range: Range,
    pub images: Vec<StoredImage>,
    next_id: u32,
}

impl<'a> ImageStore<'a> {
    /// A store over `buf`, which is the memory at `range`.
    pub fn new(range: Range, buf: &'a mut [u8]) -> Self {
        ImageStore { buf, range, images: Vec::new(), next_id: 1 }
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn used(&self) -> usize {
        self.images.iter().map(|i| i.size).sum()
    }

    pub fn get(&self, id: u32) -> Option<&StoredImage> {
        self.images.iter().find(|i| i.id == id)
    }

    /// The bytes of image `id`.
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        let im = self.get(id)?;
        self.buf.get(im.offset..im.offset + im.size)
    }

    /// The longest free run, in bytes.
    pub fn largest_free(&self) -> usize {
        self.gaps().map(|(_, len)| len).max().unwrap_or(0)
    }

    /// The free runs between images, as (offset, length), in address order.
    fn gaps(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut taken: Vec<(usize, usize)> =
            self.images.iter().map(|i| (i.offset, i.offset + i.size)).collect();
        taken.sort_unstable();
        let mut at = 0usize;
        let mut gaps = Vec::new();
        for (start, end) in taken {
            if start > at {
                gaps.push((at, start - at));
            }
            at = at.max(end.next_multiple_of(8));
        }
        if self.buf.len() > at {
            gaps.push((at, self.buf.len() - at));
        }
        gaps.into_iter()
    }

    /// Room for `size` bytes (first fit), recorded as image for `instance`.
    fn allocate(&mut self, instance: &str, size: usize, sha256: [u8; 32]) -> Option<u32> {
        let (offset, _) = self.gaps().find(|&(_, len)| len >= size)?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.images.push(StoredImage {
            id,
            instance: instance.into(),
            offset,
            size,
            sha256,
            kept_us: 0,
        });
        Some(id)
    }

    fn free(&mut self, id: u32) {
        self.images.retain(|i| i.id != id);
    }

    fn write(&mut self, id: u32, at: u64, bytes: &[u8]) -> bool {
        let Some(im) = self.get(id) else { return false };
        let Ok(at) = usize::try_from(at) else { return false };
        let Some(end) = at.checked_add(bytes.len()).filter(|&e| e <= im.size) else {
            return false;
        };
        let base = im.offset;
        match self.buf.get_mut(base + at..base + end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

/// Which image an instance runs, as the run report gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFacts {
    /// `bundle` or `pushed`.
    pub source: &'static str,
    pub size: u64,
    /// `fnv1a64:HEX` (the bundle's checksum) or `sha256:HEX` (a pushed image).
    pub hash: String,
    /// When a pushed image was kept (µs since the manager started); 0 for the bundle's.
    pub loaded_us: u64,
}

/// The transfer under way.
pub(super) struct Transfer {
    instance: usize,
    id: u32,
    size: u64,
    sha256: [u8; 32],
    chunks: Chunks,
    last_us: u64,
    started_us: u64,
}

/// Why `swap` could not be carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwapError {
    /// Nothing was pushed for it (or the pushed image was swapped in already).
    NoImage,
    /// It has not been swapped yet, so there is nothing to go back to.
    NoPrevious,
    /// It was refused at boot (no CPU or memory): it never runs.
    NeverRuns,
    /// Its CPUs could not be parked once; it is never started again.
    Quarantined,
    Stop(StopError),
}

impl fmt::Display for SwapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwapError::NoImage => f.write_str(
                "no image is kept for it (send one first: cargo xtask push --instance NAME \
                 --image FILE; 'images' lists what is kept)",
            ),
            SwapError::NoPrevious => {
                f.write_str("it has not been swapped, so it has no previous image")
            }
            SwapError::NeverRuns => f.write_str("it was refused at boot and never runs"),
            SwapError::Quarantined => {
                f.write_str("its CPUs could not be parked once; it is quarantined")
            }
            SwapError::Stop(e) => write!(f, "stopping it failed: {e}"),
        }
    }
}

/// What a swap did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Swapped {
    pub index: usize,
    pub from: ImageSource,
    pub to: ImageSource,
    /// Where it was when the answer was given.
    pub state: State,
    /// From the stop request to the new image running (or the end of the wait for it).
    pub took_us: u64,
}

/// The store's bytes of image `id`, borrowing only the store (so the caller can write through
/// the machine while it holds them).
pub(super) fn stored_bytes<'s>(store: &'s Option<ImageStore<'_>>, id: u32) -> Option<&'s [u8]> {
    store.as_ref().and_then(|s| s.bytes(id))
}

/// The bytes instance image `source` names: `bundle` (the boot bundle's file, looked up by
/// the caller) or a stored image.
pub(super) fn pick<'s>(
    source: ImageSource,
    bundle: Option<&'s [u8]>,
    store: &'s Option<ImageStore<'_>>,
) -> Result<&'s [u8], StartError> {
    match source {
        ImageSource::Bundle => bundle.ok_or(StartError::StoredImageGone { id: 0 }),
        ImageSource::Stored(id) => {
            stored_bytes(store, id).ok_or(StartError::StoredImageGone { id })
        }
    }
}

impl<'a, M: Machine> Supervisor<'a, M> {
    /// The boot bundle's image of instance `i` if it runs that one (`None` for a stored one).
    pub(super) fn bundle_image(&mut self, i: usize) -> Result<Option<&'a [u8]>, StartError> {
        match self.instances[i].image {
            ImageSource::Bundle => {
                self.image(self.instances[i].spec.file).map(Some).map_err(StartError::Bundle)
            }
            ImageSource::Stored(_) => Ok(None),
        }
    }

    /// Gives the supervisor the memory of the image store the plan reserved (the kernel maps
    /// it; the host tests use a vector). Memory of another size than the plan's is refused.
    pub fn attach_store(&mut self, buf: &'a mut [u8]) -> Result<(), Range> {
        let Some(range) = self.store_range else { return Err(Range::new(0, 0)) };
        if buf.len() as u64 != range.len() {
            return Err(range);
        }
        self.store = Some(ImageStore::new(range, buf));
        Ok(())
    }

    /// `load NAME SIZE SHA256`: starts (or resumes) a transfer into the store.
    pub fn begin_transfer(&mut self, name: &str, size: u64, sha256: [u8; 32]) -> Reply {
        let refuse = |why: String| Reply::Refused { name: name.into(), why };
        let Some(i) = self.instances.iter().position(|x| x.name == name) else {
            let known: Vec<&str> = self.instances.iter().map(|x| x.name.as_str()).collect();
            return refuse(alloc::format!(
                "no instance named '{name}' (instances: {})",
                known.join(", ")
            ));
        };
        if self.instances[i].resources.is_none() {
            return refuse(SwapError::NeverRuns.to_string());
        }
        let now = self.m.now_us();
        if let Some(t) = self.transfer.as_mut() {
            if t.instance == i && t.size == size && t.sha256 == sha256 {
                t.last_us = now;
                return Reply::Ready {
                    name: name.into(),
                    size,
                    chunks: t.chunks.count(),
                    from: t.chunks.first_missing(),
                };
            }
            self.abandon_transfer("a new transfer replaced it");
        }
        let Some(store) = self.store.as_mut() else {
            let why = match &self.store_refused {
                Some(r) => alloc::format!("there is no image store: {r}"),
                None => String::from("there is no image store ([settings] image_store = 0)"),
            };
            return refuse(why);
        };
        if size == 0 {
            return refuse(String::from("the image is empty"));
        }
        let capacity = store.capacity();
        let Some(len) = usize::try_from(size).ok().filter(|&s| s <= capacity) else {
            return refuse(alloc::format!(
                "{size} bytes do not fit the image store ({capacity} bytes; [settings] \
                 image_store)"
            ));
        };
        // An image pushed earlier and not swapped in is replaced by this one when it is kept;
        // its room is given up now only if the new one needs it.
        let mut id = store.allocate(name, len, sha256);
        if id.is_none() {
            if let Some(old) = self.instances[i].next_image.take() {
                self.release_image(old);
                id = self.store.as_mut().and_then(|s| s.allocate(name, len, sha256));
            }
        }
        let Some(id) = id else {
            let store = self.store.as_ref();
            let kept: Vec<String> = store
                .iter()
                .flat_map(|s| &s.images)
                .map(|s| alloc::format!("{} {} bytes", s.instance, s.size))
                .collect();
            return refuse(alloc::format!(
                "the image store has no free run of {size} bytes (largest {}, kept: {})",
                store.map_or(0, ImageStore::largest_free),
                if kept.is_empty() { String::from("none") } else { kept.join(", ") }
            ));
        };
        let chunks = Chunks::new(size);
        let count = chunks.count();
        self.transfer =
            Some(Transfer { instance: i, id, size, sha256, chunks, last_us: now, started_us: now });
        Reply::Ready { name: name.into(), size, chunks: count, from: 0 }
    }

    /// One data line of the transfer under way.
    pub fn transfer_line(&mut self, line: &[u8]) -> Reply {
        let mut buf = [0u8; CHUNK];
        let parsed = transfer::parse_data_line(line, &mut buf);
        let Some(t) = self.transfer.as_mut() else {
            return Reply::Error(String::from(
                "no transfer under way (data lines follow 'load NAME SIZE SHA256')",
            ));
        };
        t.last_us = self.m.now_us();
        match parsed {
            Err((Some(index), e)) => Reply::Resend { index, why: e.to_string() },
            Err((None, e)) => Reply::Error(e.to_string()),
            Ok(DataLine::Abort) => {
                let name = self.instances[t.instance].name.clone();
                let (received, chunks) = (t.chunks.received(), t.chunks.count());
                self.abandon_transfer("the sender gave up");
                Reply::Abandoned { name, received, chunks }
            }
            Ok(DataLine::Chunk { index, len }) => {
                let Some((at, want)) = t.chunks.span(index) else {
                    return Reply::Resend {
                        index,
                        why: alloc::format!("the image has {} chunks", t.chunks.count()),
                    };
                };
                if len != want {
                    return Reply::Resend {
                        index,
                        why: alloc::format!("{len} bytes, chunk {index} has {want}"),
                    };
                }
                let id = t.id;
                let written = self.store.as_mut().is_some_and(|s| s.write(id, at, &buf[..len]));
                if !written {
                    return Reply::Error(String::from("the store lost the image's room"));
                }
                if let Some(t) = self.transfer.as_mut() {
                    t.chunks.mark(index);
                }
                Reply::Ok(index)
            }
            Ok(DataLine::End) => self.finish_transfer(),
        }
    }

    /// `#end`: every chunk there, the hash right, the loader's checks passed → kept.
    fn finish_transfer(&mut self) -> Reply {
        let Some(t) = self.transfer.as_ref() else {
            return Reply::Error(String::from("no transfer under way"));
        };
        let (count, first) = (t.chunks.count(), t.chunks.first_missing());
        if first < count {
            return Reply::Missing { index: first, missing: count - t.chunks.received() };
        }
        let Some(t) = self.transfer.take() else { return Reply::Error(String::new()) };
        let name = self.instances[t.instance].name.clone();
        let refuse = |sup: &mut Self, why: String| {
            if let Some(s) = sup.store.as_mut() {
                s.free(t.id);
            }
            Reply::Refused { name: name.clone(), why }
        };
        let Some(bytes) = stored_bytes(&self.store, t.id) else {
            return refuse(self, String::from("the store lost the image"));
        };
        let digest = transfer::sha256(bytes);
        if digest != t.sha256 {
            let why = alloc::format!(
                "SHA-256 {} differs from the announced {}",
                transfer::hex(&digest),
                transfer::hex(&t.sha256)
            );
            return refuse(self, why);
        }
        if let Err(e) = self.check_image(t.instance, t.id) {
            return refuse(self, e.to_string());
        }
        let now = self.m.now_us();
        if let Some(im) =
            self.store.as_mut().and_then(|s| s.images.iter_mut().find(|x| x.id == t.id))
        {
            im.kept_us = now;
        }
        if let Some(old) = self.instances[t.instance].next_image.replace(t.id) {
            self.release_image(old);
        }
        let took_us = now.saturating_sub(t.started_us);
        let sha256 = transfer::hex(&t.sha256);
        self.m.event(&Event::ImageKept { name: &name, size: t.size, sha256: &sha256, took_us });
        Reply::Kept { name, size: t.size, sha256 }
    }

    /// The checks a stored image must pass for instance `i`: the same as at boot.
    fn check_image(&mut self, i: usize, id: u32) -> Result<(), StartError> {
        let Some(res) = self.instances[i].resources.clone() else {
            return Err(StartError::Transition(crate::lifecycle::TransitionError::Refused));
        };
        if self.instances[i].spec.protocol == Protocol::Linux {
            return self.check_linux_image(i, id);
        }
        let image = stored_bytes(&self.store, id).ok_or(StartError::StoredImageGone { id })?;
        super::load::plan_native(res.region, res.cpus.len() as u64, image).map(|_| ())
    }

    /// Drops the transfer under way, freeing its room.
    pub(super) fn abandon_transfer(&mut self, why: &str) {
        let Some(t) = self.transfer.take() else { return };
        if let Some(s) = self.store.as_mut() {
            s.free(t.id);
        }
        let name = &self.instances[t.instance].name;
        self.m.event(&Event::TransferAbandoned {
            name,
            received: t.chunks.received(),
            chunks: t.chunks.count(),
            why,
        });
    }

    /// Abandons a transfer that has been silent for [`transfer::IDLE_TIMEOUT_US`].
    pub(super) fn expire_transfer(&mut self) {
        let idle = self
            .transfer
            .as_ref()
            .is_some_and(|t| self.m.now_us().saturating_sub(t.last_us) > transfer::IDLE_TIMEOUT_US);
        if idle {
            self.abandon_transfer("nothing was received for 60 s");
        }
    }

    /// Frees stored image `id` unless an instance still refers to it.
    fn release_image(&mut self, id: u32) {
        let used = self.instances.iter().any(|x| {
            x.image == ImageSource::Stored(id)
                || x.next_image == Some(id)
                || x.previous_image == Some(ImageSource::Stored(id))
        });
        if !used {
            if let Some(s) = self.store.as_mut() {
                s.free(id);
            }
        }
    }

    /// `swap NAME [--previous]`: stop it, switch its image, start it again on the same CPUs
    /// and region. A new image that fails to start leaves the instance `failed` with the
    /// reason; `swap NAME --previous` brings the old one back.
    pub fn swap(&mut self, i: usize, previous: bool) -> Result<Swapped, SwapError> {
        let inst = &self.instances[i];
        if inst.resources.is_none() {
            return Err(SwapError::NeverRuns);
        }
        if inst.quarantined {
            return Err(SwapError::Quarantined);
        }
        let from = inst.image;
        let to = if previous {
            inst.previous_image.ok_or(SwapError::NoPrevious)?
        } else {
            ImageSource::Stored(inst.next_image.ok_or(SwapError::NoImage)?)
        };
        let t0 = self.m.now_us();
        if self.instances[i].state != State::Stopped {
            self.stop(i).map_err(SwapError::Stop)?;
        }
        // A restart the policy had scheduled is for the old image: cancel it.
        self.instances[i].next_restart = None;
        let inst = &mut self.instances[i];
        inst.image = to;
        inst.previous_image = Some(from);
        if !previous {
            inst.next_image = None;
        }
        inst.swaps = inst.swaps.saturating_add(1);
        self.m.event(&Event::Swapping { name: &self.instances[i].name, from, to });
        // A start error marks the instance failed (with the reason) inside `start`.
        let _ = self.start_one(i);
        let took_us = self.m.now_us().saturating_sub(t0);
        self.instances[i].swap_us.push(took_us, super::instance::MAX_DURATIONS);
        Ok(Swapped { index: i, from, to, state: self.instances[i].state, took_us })
    }

    /// A one-line description of where instance `i`'s image comes from.
    pub fn image_text(&self, source: ImageSource, i: usize) -> String {
        match source {
            ImageSource::Bundle => {
                let spec = &self.instances[i].spec;
                match self.parsed.files.get(spec.file as usize) {
                    Some(f) => alloc::format!(
                        "boot bundle file '{}', {} bytes, fnv1a64 {:016x}",
                        f.name,
                        f.len,
                        f.checksum
                    ),
                    None => String::from("boot bundle"),
                }
            }
            ImageSource::Stored(id) => match self.store.as_ref().and_then(|s| s.get(id)) {
                Some(im) => alloc::format!(
                    "pushed, {} bytes, sha256 {}, kept at {}.{:03} s",
                    im.size,
                    transfer::hex(&im.sha256),
                    im.kept_us / 1_000_000,
                    im.kept_us / 1000 % 1000
                ),
                None => alloc::format!("pushed image {id} (no longer in the store)"),
            },
        }
    }

    /// What instance `i` runs, for the run report.
    pub fn image_facts(&self, i: usize) -> ImageFacts {
        match self.instances[i].image {
            ImageSource::Bundle => {
                let f = self.parsed.files.get(self.instances[i].spec.file as usize);
                ImageFacts {
                    source: "bundle",
                    size: f.map_or(0, |f| f.len),
                    hash: alloc::format!("fnv1a64:{:016x}", f.map_or(0, |f| f.checksum)),
                    loaded_us: 0,
                }
            }
            ImageSource::Stored(id) => {
                let im = self.store.as_ref().and_then(|s| s.get(id));
                ImageFacts {
                    source: "pushed",
                    size: im.map_or(0, |im| im.size as u64),
                    hash: alloc::format!(
                        "sha256:{}",
                        im.map_or_else(String::new, |im| transfer::hex(&im.sha256))
                    ),
                    loaded_us: im.map_or(0, |im| im.kept_us),
                }
            }
        }
    }

    /// The store, if there is one.
    pub fn store(&self) -> Option<&ImageStore<'a>> {
        self.store.as_ref()
    }

    /// Why there is no store, if there is none.
    pub fn store_refused(&self) -> Option<&str> {
        self.store_refused.as_deref()
    }

    /// The transfer under way: instance name, chunks received, chunks in all.
    pub fn transfer_progress(&self) -> Option<(&str, u32, u32)> {
        self.transfer.as_ref().map(|t| {
            (self.instances[t.instance].name.as_str(), t.chunks.received(), t.chunks.count())
        })
    }
}

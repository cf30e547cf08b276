//! Channels between instances (`bootproto::channel`): the manager's part.
//!
//! The manager never reads or writes messages. It gives each channel a region of its own from
//! the plan (outside every instance), writes the channel header before the first start of
//! either side, maps the region (read/write, no-execute) into the page tables of its two
//! instances and no other, lists it in their boot info, adds 2 to a side's epoch before each
//! start of that side (so the peer sees the restart and stale messages are dropped), scrubs the
//! region (zero, read back) once both sides are stopped, and reports what each side says it
//! sent and received. Everything it reads from the region is untrusted and only reported.

use alloc::string::String;
use alloc::vec::Vec;

use bootproto::channel::{self as ch, offset};
use bootproto::{info_page, ChannelInfo, NAME_LEN};

use crate::bundle::Channel;
use crate::memmap::Range;

use super::error::StartError;
use super::machine::{Machine, MemError};
use super::Supervisor;

/// A channel's state in the manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelState {
    pub spec: Channel,
    /// Its region, if the plan gave it one.
    pub region: Option<Range>,
    /// Why it has none.
    pub refused: Option<String>,
    /// The header is written and the region is in use (since the first start of a side, until
    /// both sides stopped and it was scrubbed).
    pub ready: bool,
    /// Scrubs done and verified.
    pub scrubs: u32,
}

/// What a side reported in its channel header (untrusted, for the report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SideCounts {
    pub epoch: u32,
    pub sent: u64,
    pub received: u64,
}

impl<M: Machine> Supervisor<'_, M> {
    /// The channels instance `i` is a side of: (channel index, side).
    pub fn channels_of(&self, i: usize) -> Vec<(usize, usize)> {
        self.channels
            .iter()
            .enumerate()
            .filter_map(|(c, s)| {
                s.spec.between.iter().position(|&b| b as usize == i).map(|side| (c, side))
            })
            .collect()
    }

    /// The regions instance `i` maps: its channels'.
    pub(super) fn channel_regions(&self, i: usize) -> Vec<Range> {
        self.channels_of(i).into_iter().filter_map(|(c, _)| self.channels[c].region).collect()
    }

    /// Before instance `i` starts: every channel of it is ready (header written once), and its
    /// side's epoch moves on. Returns the boot-info records, in channel order.
    pub(super) fn prepare_channels(&mut self, i: usize) -> Result<Vec<ChannelInfo>, StartError> {
        let mut infos = Vec::new();
        for (c, side) in self.channels_of(i) {
            let (Some(region), spec) = (self.channels[c].region, self.channels[c].spec.clone())
            else {
                let why = self.channels[c].refused.clone().unwrap_or_default();
                return Err(StartError::Channel { name: self.channels[c].spec.name.clone(), why });
            };
            if !self.channels[c].ready {
                self.m.fill(region.start, region.len(), 0).map_err(StartError::Memory)?;
                let base = region.start;
                self.m.write_u32(base + offset::MAGIC, ch::MAGIC).map_err(StartError::Memory)?;
                self.m
                    .write_u32(base + offset::VERSION, ch::VERSION)
                    .map_err(StartError::Memory)?;
                self.m
                    .write(base + offset::SIZE, &region.len().to_le_bytes())
                    .map_err(StartError::Memory)?;
                self.m
                    .write_u32(base + offset::SLOTS, ch::slots_for(region.len()))
                    .map_err(StartError::Memory)?;
                self.channels[c].ready = true;
            }
            let epoch_at = region.start + offset::epoch(side);
            let epoch = self.m.read_u32(epoch_at).map_err(StartError::Memory)?;
            self.m.write_u32(epoch_at, (epoch & !1).wrapping_add(2)).map_err(StartError::Memory)?;
            let peer = spec.between[1 - side] as usize;
            let (peer_apic_id, peer_cpu_count) = self.instances.get(peer).map_or((0, 0), |p| {
                (p.cpus().first().copied().unwrap_or(0), p.cpus().len() as u32)
            });
            let mut info = ChannelInfo {
                name: [0; NAME_LEN],
                peer_name: [0; NAME_LEN],
                base: region.start,
                size: region.len(),
                peer_apic_id,
                peer_cpu_count,
                doorbell_vector: u32::from(ch::DOORBELL_BASE) + c as u32,
                side: side as u32,
            };
            bootproto::fill_str(&spec.name, &mut info.name);
            if let Some(p) = self.instances.get(peer) {
                bootproto::fill_str(&p.name, &mut info.peer_name);
            }
            infos.push(info);
        }
        infos.truncate(info_page::MAX_CHANNELS);
        Ok(infos)
    }

    /// After instance `i` stopped: scrub every channel of it whose other side is not live.
    pub(super) fn release_channels(&mut self, i: usize) -> Result<(), MemError> {
        for (c, side) in self.channels_of(i) {
            let peer = self.channels[c].spec.between[1 - side] as usize;
            let peer_live = self.instances.get(peer).is_some_and(|p| p.state.is_live());
            let (Some(region), true, false) =
                (self.channels[c].region, self.channels[c].ready, peer_live)
            else {
                continue;
            };
            self.m.fill(region.start, region.len(), 0)?;
            if let Some(addr) = self.m.first_nonzero(region.start, region.len())? {
                return Err(MemError { paddr: addr, len: 1 });
            }
            self.channels[c].ready = false;
            self.channels[c].scrubs += 1;
        }
        Ok(())
    }

    /// What each side of channel `c` reports in its header (zeros if it is not in use).
    pub fn channel_counts(&self, c: usize) -> [SideCounts; 2] {
        let Some(region) = self.channels.get(c).filter(|s| s.ready).and_then(|s| s.region) else {
            return [SideCounts::default(); 2];
        };
        let read = |side: usize| SideCounts {
            epoch: self.m.read_u32(region.start + offset::epoch(side)).unwrap_or(0),
            sent: self.m.read_u64(region.start + offset::sent(side)).unwrap_or(0),
            received: self.m.read_u64(region.start + offset::received(side)).unwrap_or(0),
        };
        [read(0), read(1)]
    }
}

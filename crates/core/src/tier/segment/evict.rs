//! Eviction: the oldest segment goes, and the policy picks which of its live records get a
//! second chance (re-appended).

use super::*;

/// Drops an evicted segment off the caller's thread: closing the last descriptor of an
/// unlinked, written segment frees its extents, which takes tens of milliseconds (33 ms for
/// 256 MiB on ext4 here), and would stall the put that rolled the segment. A reader still
/// holding the segment closes it instead when it is done.
pub(super) fn close_in_background(seg: Arc<Segment>) {
    // Should the thread not start, the closure (and the segment) is dropped here instead.
    let _ = std::thread::Builder::new()
        .name("kvtier-segment-close".into())
        .spawn(move || drop(seg));
}

impl SegmentStore {
    pub(super) fn pick_victim(&self, exclude: Option<u64>) -> Option<Arc<Segment>> {
        let mut segs = self.segments.write();
        let id = segs.iter().find_map(|(id, s)| {
            let st = s.state.lock();
            (Some(*id) != exclude && st.closed && st.inflight == 0).then_some(*id)
        })?;
        let seg = segs.remove(&id)?;
        drop(segs);
        if let Err(e) = std::fs::remove_file(&seg.path) {
            tracing::warn!(segment = %seg.path.display(), error = %e, "could not remove evicted segment");
        }
        self.counters.segments_evicted.inc();
        Some(seg)
    }

    /// Drops a victim's index entries; first re-appends the ones the policy values when
    /// `second_chance` (see [`SegmentStore`]).
    pub(super) fn drop_segment(&self, victim: Arc<Segment>, second_chance: bool) {
        let keys = std::mem::take(&mut *victim.keys.lock());
        // The victim's live records: (key, offset, length, read since written).
        let live: Vec<(BlockKey, u64, usize, bool)> = keys
            .into_iter()
            .filter_map(|(key, off)| match self.index.get(&key) {
                Some(l) if l.seg == victim.id && l.off == off => {
                    Some((key, off, l.len as usize, l.hot.load(Ordering::Relaxed)))
                }
                _ => None,
            })
            .collect();
        let keep = if second_chance {
            self.second_chances(&live)
        } else {
            Vec::new()
        };
        let mut budget = self.cfg.segment_bytes / 2;
        let mut buf = AlignedBuf::zeroed(0);
        let mut kept = vec![false; live.len()];
        for i in keep {
            let (key, off, len, _) = live[i];
            if len as u64 > budget {
                continue;
            }
            budget -= len as u64;
            if buf.len() < len {
                buf = AlignedBuf::zeroed(len);
            }
            kept[i] = self.io.read_at(&victim.file, &mut buf[..len], off).is_ok()
                && self.verify(&buf[..len], key).is_ok()
                && self.append(&buf[..len], key, Origin::SecondChance).is_ok();
            if kept[i] {
                self.counters.second_chances.inc();
            }
        }
        let mut dropped = Vec::new();
        for (&(key, off, _, _), kept) in live.iter().zip(kept) {
            if !kept
                && self
                    .index
                    .remove_if(&key, |_, l| l.seg == victim.id && l.off == off)
                    .is_some()
            {
                self.counters.store.evictions.inc();
                dropped.push(key);
            }
        }
        self.with_policy(|p| dropped.into_iter().for_each(|k| p.evicted(k)));
        close_in_background(victim);
    }

    /// Which of a victim's live records get a second chance, best first (indices into `live`).
    pub(super) fn second_chances(&self, live: &[(BlockKey, u64, usize, bool)]) -> Vec<usize> {
        let standing: Vec<_> = {
            let p = self.policy.lock();
            live.iter()
                .map(|r| p.as_ref().and_then(|p| p.standing(&r.0)))
                .collect()
        };
        let mut densities: Vec<f64> = standing.iter().flatten().map(|s| s.density).collect();
        densities.sort_by(f64::total_cmp);
        let learnt = densities.last().is_some_and(|&d| d > 0.0);
        let median = densities.get(densities.len() / 2).copied().unwrap_or(0.0);
        let mut keep: Vec<(f64, usize)> = live
            .iter()
            .zip(&standing)
            .enumerate()
            .filter_map(|(i, (&(_, _, _, hot), st))| match st {
                Some(s) if learnt => (s.uses >= 2 && s.density > 0.0 && s.density >= median)
                    .then_some((s.density, i)),
                // No ranking (LRU, an untracked record) or nothing learnt: read since written.
                _ => hot.then_some((f64::INFINITY, i)),
            })
            .collect();
        // Highest density first; among equals, oldest first.
        keep.sort_by(|a, b| b.0.total_cmp(&a.0));
        keep.into_iter().map(|(_, i)| i).collect()
    }
}

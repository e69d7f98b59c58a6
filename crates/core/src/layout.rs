//! KV memory layouts: how an engine lays out its KV cache, and how one engine block maps to one
//! contiguous, layer-major block object.
//!
//! Every layout is described per layer: each layer has one tensor (its own allocation, or a
//! slice of a shared one) of `layer_bytes`. Within a layer, block `b` occupies one or two
//! *segments* (one for K and V together, or K and V apart). The block object is the
//! concatenation, layer by layer, of those segments, so a layer's slice of the object is
//! contiguous and loads can be pipelined layer by layer.

use std::ops::Range;

use xxhash_rust::xxh3::xxh3_64;

use crate::dtype::KvDtype;
use crate::error::{Error, Result};

/// The engine layouts kvtier knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayoutKind {
    /// vLLM's CUDA FlashAttention layout: per layer `[2, num_blocks, block_size, kv_heads,
    /// head_size]` (all K blocks, then all V blocks).
    VllmFlash,
    /// vLLM's CPU attention layout: per layer `[num_blocks, kv_heads, block_size, 2*head_size]`
    /// (per block and head, the K row slab then the V row slab).
    VllmCpu,
    /// A plain layer-major layout: per layer `[num_blocks, 2, block_size, kv_heads, head_size]`
    /// (each block's K then V, contiguous). Also FlashInfer's NHD layout.
    LayerMajor,
}

impl LayoutKind {
    /// The layout id used in namespaces (`vllm-flash`, `vllm-cpu`, `layer-major`).
    pub fn id(self) -> &'static str {
        match self {
            LayoutKind::VllmFlash => "vllm-flash",
            LayoutKind::VllmCpu => "vllm-cpu",
            LayoutKind::LayerMajor => "layer-major",
        }
    }

    /// Parses a layout id.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "vllm-flash" => Ok(LayoutKind::VllmFlash),
            "vllm-cpu" => Ok(LayoutKind::VllmCpu),
            "layer-major" => Ok(LayoutKind::LayerMajor),
            _ => Err(Error::invalid(format!(
                "unknown layout `{s}`; expected vllm-flash, vllm-cpu or layer-major"
            ))),
        }
    }

    fn segments(self) -> u64 {
        match self {
            LayoutKind::VllmFlash => 2,
            LayoutKind::VllmCpu | LayoutKind::LayerMajor => 1,
        }
    }
}

/// Shape of an engine's KV cache and where each block lives in each layer's tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvLayout {
    kind: LayoutKind,
    num_layers: u32,
    num_blocks: u32,
    block_size: u32,
    num_kv_heads: u32,
    head_size: u32,
    dtype: KvDtype,
    /// Bytes between block `b` and block `b+1` within a layer.
    block_stride: u64,
    /// Bytes between a block's K segment and its V segment (two-segment layouts only).
    kv_stride: u64,
    /// Bytes of one layer's tensor.
    layer_bytes: u64,
}

/// One contiguous copy between a layer tensor and a block object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpan {
    /// Layer index.
    pub layer: usize,
    /// Byte range within that layer's tensor.
    pub engine: Range<usize>,
    /// Byte range within the block object's payload.
    pub object: Range<usize>,
}

impl KvLayout {
    /// A densely packed layout of `kind` (strides as the engine allocates them).
    ///
    /// Every dimension must be at least 1; the error names the one that is not.
    pub fn new(
        kind: LayoutKind,
        num_layers: u32,
        num_blocks: u32,
        block_size: u32,
        num_kv_heads: u32,
        head_size: u32,
        dtype: KvDtype,
    ) -> Result<Self> {
        for (name, v) in [
            ("num_layers", num_layers),
            ("num_blocks", num_blocks),
            ("block_size", block_size),
            ("num_kv_heads", num_kv_heads),
            ("head_size", head_size),
        ] {
            if v == 0 {
                return Err(Error::invalid(format!(
                    "layout field `{name}` must be at least 1"
                )));
            }
        }
        let seg = segment_len(kind, block_size, num_kv_heads, head_size, dtype)?;
        let n = num_blocks as u64;
        let block_stride = seg;
        let kv_stride = if kind.segments() == 2 {
            mul(n, seg)?
        } else {
            0
        };
        let layer_bytes = mul(mul(n, seg)?, kind.segments())?;
        let layout = KvLayout {
            kind,
            num_layers,
            num_blocks,
            block_size,
            num_kv_heads,
            head_size,
            dtype,
            block_stride,
            kv_stride,
            layer_bytes,
        };
        layout.validate()?;
        Ok(layout)
    }

    /// Overrides the strides for padded tensors: `block_stride` is the distance between blocks,
    /// `kv_stride` between a block's K and V (ignored for one-segment layouts), `layer_bytes` the
    /// size of each layer's tensor. Rejects strides that would make blocks overlap or run past
    /// the tensor.
    pub fn with_strides(
        mut self,
        block_stride: u64,
        kv_stride: u64,
        layer_bytes: u64,
    ) -> Result<Self> {
        self.block_stride = block_stride;
        self.kv_stride = if self.kind.segments() == 2 {
            kv_stride
        } else {
            0
        };
        self.layer_bytes = layer_bytes;
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<()> {
        let seg = self.segment_len();
        let n = self.num_blocks as u64;
        if self.block_stride < seg && n > 1 {
            return Err(Error::invalid(format!(
                "layout `block_stride` {} is smaller than a block's segment ({seg} bytes)",
                self.block_stride
            )));
        }
        let span_one = mul(n - 1, self.block_stride)?
            .checked_add(seg)
            .ok_or_else(overflow)?;
        let needed = if self.kind.segments() == 2 {
            // K and V regions apart (FlashAttention), or interleaved within each block stride.
            let apart = self.kv_stride >= span_one;
            let interleaved =
                self.kv_stride >= seg && self.kv_stride + seg <= self.block_stride.max(seg);
            if !apart && !interleaved {
                return Err(Error::invalid(format!(
                    "layout `kv_stride` {} makes K and V segments overlap (segment {seg} bytes, block_stride {})",
                    self.kv_stride, self.block_stride
                )));
            }
            self.kv_stride.checked_add(span_one).ok_or_else(overflow)?
        } else {
            span_one
        };
        if self.layer_bytes < needed {
            return Err(Error::invalid(format!(
                "layout `layer_bytes` {} is too small: the blocks need {needed} bytes per layer",
                self.layer_bytes
            )));
        }
        // The object (every layer's slice of a block) must be addressable too.
        let object = mul(mul(seg, self.kind.segments())?, self.num_layers as u64)?;
        if usize::try_from(self.layer_bytes).is_err()
            || usize::try_from(object).is_err()
            || object > crate::block::MAX_PAYLOAD_LEN
        {
            return Err(Error::invalid(format!(
                "layout is too large: {object} bytes per block object (at most {} allowed) or {} bytes per layer",
                crate::block::MAX_PAYLOAD_LEN,
                self.layer_bytes
            )));
        }
        Ok(())
    }

    /// The kind of layout.
    pub fn kind(&self) -> LayoutKind {
        self.kind
    }
    /// Number of layers.
    pub fn num_layers(&self) -> u32 {
        self.num_layers
    }
    /// Number of blocks in each layer's tensor.
    pub fn num_blocks(&self) -> u32 {
        self.num_blocks
    }
    /// Tokens per block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    /// KV heads (of this rank).
    pub fn num_kv_heads(&self) -> u32 {
        self.num_kv_heads
    }
    /// Head size (elements).
    pub fn head_size(&self) -> u32 {
        self.head_size
    }
    /// Element type.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }
    /// Bytes of one layer's tensor.
    pub fn layer_bytes(&self) -> u64 {
        self.layer_bytes
    }

    /// Bytes of one segment of one block in one layer.
    pub fn segment_len(&self) -> u64 {
        // validated at construction: cannot overflow
        segment_len(
            self.kind,
            self.block_size,
            self.num_kv_heads,
            self.head_size,
            self.dtype,
        )
        .unwrap_or(u64::MAX)
    }

    /// Bytes of one layer's slice of a block object (K and V of `block_size` tokens).
    pub fn layer_slice_len(&self) -> u64 {
        self.segment_len() * self.kind.segments()
    }

    /// Payload bytes of one block object: every layer's K and V for one block.
    pub fn object_len(&self) -> u64 {
        self.layer_slice_len() * self.num_layers as u64
    }

    /// KV bytes per token across all layers (for capacity planning).
    pub fn bytes_per_token(&self) -> u64 {
        self.object_len() / self.block_size as u64
    }

    /// The byte range of `layer`'s slice within the block object.
    pub fn object_layer_range(&self, layer: u32) -> Range<usize> {
        let l = self.layer_slice_len() as usize;
        let start = layer as usize * l;
        start..start + l
    }

    /// The byte ranges block `block` occupies in each layer's tensor (one or two segments; the
    /// same offsets in every layer).
    pub fn block_ranges(&self, block: u32) -> Result<Vec<Range<usize>>> {
        if block >= self.num_blocks {
            return Err(Error::invalid(format!(
                "block id {block} is out of range: the layout has {} blocks",
                self.num_blocks
            )));
        }
        let seg = self.segment_len() as usize;
        let k = block as usize * self.block_stride as usize;
        #[allow(clippy::single_range_in_vec_init)] // one segment: a list of one range
        Ok(match self.kind.segments() {
            2 => {
                let v = k + self.kv_stride as usize;
                vec![k..k + seg, v..v + seg]
            }
            _ => vec![k..k + seg],
        })
    }

    /// Every contiguous copy that moves block `block` between the layer tensors and an object,
    /// in object order (layer by layer, K before V).
    pub fn copy_plan(&self, block: u32) -> Result<Vec<CopySpan>> {
        let ranges = self.block_ranges(block)?;
        let mut plan = Vec::with_capacity(ranges.len() * self.num_layers as usize);
        let mut off = 0usize;
        for layer in 0..self.num_layers as usize {
            for r in &ranges {
                plan.push(CopySpan {
                    layer,
                    engine: r.clone(),
                    object: off..off + r.len(),
                });
                off += r.len();
            }
        }
        Ok(plan)
    }

    /// Digest of everything that determines the object format (kind, layers, block size, heads,
    /// head size, dtype; not the number of blocks or strides). Stored in each object header: an
    /// object is only loaded into a layout with the same digest.
    pub fn digest(&self) -> u64 {
        let mut enc = Vec::with_capacity(64);
        enc.extend_from_slice(b"kvtier-layout");
        enc.extend_from_slice(&(self.kind.id().len() as u32).to_le_bytes());
        enc.extend_from_slice(self.kind.id().as_bytes());
        for v in [
            self.num_layers,
            self.block_size,
            self.num_kv_heads,
            self.head_size,
        ] {
            enc.extend_from_slice(&v.to_le_bytes());
        }
        enc.extend_from_slice(&(self.dtype.name().len() as u32).to_le_bytes());
        enc.extend_from_slice(self.dtype.name().as_bytes());
        xxh3_64(&enc)
    }

    fn check_layers(&self, lens: impl ExactSizeIterator<Item = usize>) -> Result<()> {
        if lens.len() != self.num_layers as usize {
            return Err(Error::invalid(format!(
                "{} layer tensors given; the layout has {} layers",
                lens.len(),
                self.num_layers
            )));
        }
        for (i, len) in lens.enumerate() {
            if (len as u64) < self.layer_bytes {
                return Err(Error::invalid(format!(
                    "layer {i} tensor is {len} bytes; the layout needs {}",
                    self.layer_bytes
                )));
            }
        }
        Ok(())
    }

    fn check_object(&self, len: usize) -> Result<()> {
        if len as u64 != self.object_len() {
            return Err(Error::invalid(format!(
                "block object buffer is {len} bytes; the layout's objects are {}",
                self.object_len()
            )));
        }
        Ok(())
    }

    /// Copies block `block` from the layer tensors into one contiguous object (host memory).
    pub fn gather(&self, layers: &[&[u8]], block: u32, object: &mut [u8]) -> Result<()> {
        self.check_layers(layers.iter().map(|l| l.len()))?;
        self.check_object(object.len())?;
        for span in self.copy_plan(block)? {
            object[span.object].copy_from_slice(&layers[span.layer][span.engine]);
        }
        Ok(())
    }

    /// Copies an object back into block `block` of the layer tensors (host memory).
    pub fn scatter(&self, object: &[u8], layers: &mut [&mut [u8]], block: u32) -> Result<()> {
        self.check_layers(layers.iter().map(|l| l.len()))?;
        self.check_object(object.len())?;
        for span in self.copy_plan(block)? {
            layers[span.layer][span.engine].copy_from_slice(&object[span.object]);
        }
        Ok(())
    }

    /// [`scatter`](Self::scatter) into layer tensors given by their addresses, so that
    /// several threads can copy distinct blocks of the same tensors at once (distinct blocks
    /// never share a byte; shared `&mut` slices of the tensors could not express that).
    ///
    /// # Safety
    /// Each of `layers` must point to at least [`layer_bytes`](Self::layer_bytes) writable
    /// bytes, and nothing else may read or write block `block`'s bytes during the call.
    pub unsafe fn scatter_to(&self, object: &[u8], layers: &[*mut u8], block: u32) -> Result<()> {
        self.check_layers(layers.iter().map(|_| self.layer_bytes as usize))?;
        self.check_object(object.len())?;
        for span in self.copy_plan(block)? {
            debug_assert!(span.engine.end as u64 <= self.layer_bytes);
            // SAFETY: the plan's ranges lie inside a layer tensor and inside the object (both
            // sizes checked above); the caller owns the block's bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    object.as_ptr().add(span.object.start),
                    layers[span.layer].add(span.engine.start),
                    span.object.len(),
                );
            }
        }
        Ok(())
    }

    /// [`scatter_to`](Self::scatter_to) of one layer only: copies `layer`'s slice of the block
    /// object into that layer's tensor, so that a load can hand the engine its layers in order.
    ///
    /// # Safety
    /// As for [`scatter_to`](Self::scatter_to).
    pub unsafe fn scatter_layer_to(
        &self,
        object: &[u8],
        layers: &[*mut u8],
        block: u32,
        layer: u32,
    ) -> Result<()> {
        self.check_layers(layers.iter().map(|_| self.layer_bytes as usize))?;
        self.check_object(object.len())?;
        if layer >= self.num_layers {
            return Err(Error::invalid(format!(
                "layer {layer} is out of range: the layout has {} layers",
                self.num_layers
            )));
        }
        let base = self.object_layer_range(layer).start;
        let mut off = base;
        for r in self.block_ranges(block)? {
            debug_assert!(r.end as u64 <= self.layer_bytes);
            // SAFETY: the range lies inside the layer tensor and `off..off + r.len()` inside
            // the object (both sizes checked above); the caller owns the block's bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    object.as_ptr().add(off),
                    layers[layer as usize].add(r.start),
                    r.len(),
                );
            }
            off += r.len();
        }
        Ok(())
    }
}

fn overflow() -> Error {
    Error::invalid("layout dimensions overflow the address space")
}

fn mul(a: u64, b: u64) -> Result<u64> {
    a.checked_mul(b).ok_or_else(overflow)
}

fn segment_len(
    kind: LayoutKind,
    block_size: u32,
    heads: u32,
    head_size: u32,
    dtype: KvDtype,
) -> Result<u64> {
    let elems = mul(mul(block_size as u64, heads as u64)?, head_size as u64)?;
    let kv = match kind {
        LayoutKind::VllmFlash => 1,
        LayoutKind::VllmCpu | LayoutKind::LayerMajor => 2,
    };
    mul(mul(elems, kv)?, dtype.size())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds() -> impl Strategy<Value = LayoutKind> {
        prop_oneof![
            Just(LayoutKind::VllmFlash),
            Just(LayoutKind::VllmCpu),
            Just(LayoutKind::LayerMajor)
        ]
    }

    fn layouts() -> impl Strategy<Value = KvLayout> {
        (
            kinds(),
            1u32..4,
            1u32..6,
            1u32..5,
            1u32..3,
            1u32..5,
            0u64..3,
            prop::bool::ANY,
        )
            .prop_map(|(kind, l, n, b, h, d, pad, interleave)| {
                let base = KvLayout::new(kind, l, n, b, h, d, KvDtype::Bf16).unwrap();
                let seg = base.segment_len();
                if pad == 0 {
                    return base;
                }
                // Padded strides: an extra `pad` bytes between blocks, and for two-segment
                // layouts either K/V apart or interleaved within a block stride.
                let (bs, kv) = if kind == LayoutKind::VllmFlash && interleave {
                    (2 * seg + pad, seg + pad / 2)
                } else {
                    (seg + pad, (n as u64) * (seg + pad) + pad)
                };
                let need = if kind == LayoutKind::VllmFlash {
                    kv + (n as u64 - 1) * bs + seg
                } else {
                    (n as u64 - 1) * bs + seg
                };
                base.with_strides(bs, kv, need + pad).unwrap()
            })
    }

    #[test]
    fn known_shapes() {
        // vLLM CPU, 8 layers, block 128, 2 KV heads, head 128, bf16: 8 KiB per token.
        let cpu = KvLayout::new(LayoutKind::VllmCpu, 8, 16, 128, 2, 128, KvDtype::Bf16).unwrap();
        assert_eq!(cpu.bytes_per_token(), 8 * 2 * 2 * 128 * 2);
        assert_eq!(cpu.object_len(), 128 * 8192);
        assert_eq!(cpu.block_ranges(3).unwrap(), vec![3 * 131072..4 * 131072]);
        let fa = KvLayout::new(LayoutKind::VllmFlash, 2, 10, 16, 8, 128, KvDtype::F16).unwrap();
        let seg = 16 * 8 * 128 * 2;
        assert_eq!(
            fa.block_ranges(1).unwrap(),
            vec![seg..2 * seg, 11 * seg..12 * seg]
        );
        assert_eq!(fa.layer_bytes(), 20 * seg as u64);
        assert_eq!(fa.object_layer_range(1), 2 * seg..4 * seg);
        assert!(fa.block_ranges(10).is_err());
        assert_ne!(cpu.digest(), fa.digest());
    }

    #[test]
    fn bad_input_is_named() {
        let e = KvLayout::new(LayoutKind::VllmCpu, 0, 1, 1, 1, 1, KvDtype::F16).unwrap_err();
        assert!(e.to_string().contains("num_layers"));
        let l = KvLayout::new(LayoutKind::VllmFlash, 1, 4, 1, 1, 1, KvDtype::F16).unwrap();
        let e = l.clone().with_strides(2, 3, 100).unwrap_err();
        assert!(e.to_string().contains("kv_stride"), "{e}");
        let e = l.clone().with_strides(2, 8, 8).unwrap_err();
        assert!(e.to_string().contains("layer_bytes"), "{e}");
        let mut obj = vec![0u8; l.object_len() as usize + 1];
        let layer = vec![0u8; l.layer_bytes() as usize];
        let e = l.gather(&[&layer], 0, &mut obj).unwrap_err();
        assert!(e.to_string().contains("object buffer"), "{e}");
        let e = l.gather(&[], 0, &mut obj[1..]).unwrap_err();
        assert!(e.to_string().contains("layer tensors"), "{e}");
        assert!(KvDtype::parse("torch.bfloat16").unwrap() == KvDtype::Bf16);
        // Dimensions whose block object would overflow are refused, not wrapped.
        let e = KvLayout::new(
            LayoutKind::VllmCpu,
            u32::MAX,
            1,
            u32::MAX,
            1,
            1,
            KvDtype::F32,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("too large") || e.to_string().contains("overflow"),
            "{e}"
        );
        assert!(KvDtype::parse("int3").is_err());
    }

    proptest! {
        #[test]
        fn ranges_are_disjoint_and_inside(layout in layouts()) {
            let mut all: Vec<Range<usize>> = Vec::new();
            for b in 0..layout.num_blocks() {
                for r in layout.block_ranges(b).unwrap() {
                    prop_assert!(r.end as u64 <= layout.layer_bytes());
                    prop_assert_eq!(r.len() as u64, layout.segment_len());
                    all.push(r);
                }
            }
            all.sort_by_key(|r| r.start);
            for w in all.windows(2) {
                prop_assert!(w[0].end <= w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
            }
            // Object side: spans tile the payload exactly.
            let plan = layout.copy_plan(0).unwrap();
            let mut off = 0;
            for s in &plan { prop_assert_eq!(s.object.start, off); off = s.object.end; }
            prop_assert_eq!(off as u64, layout.object_len());
            for l in 0..layout.num_layers() {
                let r = layout.object_layer_range(l);
                let in_layer: usize = plan.iter().filter(|s| s.layer == l as usize).map(|s| s.object.len()).sum();
                prop_assert_eq!(r.len(), in_layer);
            }
        }

        #[test]
        fn gather_then_scatter_is_identity(layout in layouts(), seed in any::<u64>(), pick in any::<prop::sample::Index>()) {
            let block = pick.index(layout.num_blocks() as usize) as u32;
            let mut state = seed | 1;
            let mut layers: Vec<Vec<u8>> = (0..layout.num_layers()).map(|_| {
                (0..layout.layer_bytes()).map(|_| { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state as u8 }).collect()
            }).collect();
            let before = layers.clone();
            let mut obj = vec![0u8; layout.object_len() as usize];
            let views: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
            layout.gather(&views, block, &mut obj).unwrap();
            // Scatter back into the same memory: nothing changes.
            let mut views: Vec<&mut [u8]> = layers.iter_mut().map(|l| l.as_mut_slice()).collect();
            layout.scatter(&obj, &mut views, block).unwrap();
            prop_assert_eq!(&layers, &before);
            // Scatter into zeroed memory, gather again: the same object; other bytes untouched.
            let mut zero: Vec<Vec<u8>> = (0..layout.num_layers()).map(|_| vec![0u8; layout.layer_bytes() as usize]).collect();
            let mut zviews: Vec<&mut [u8]> = zero.iter_mut().map(|l| l.as_mut_slice()).collect();
            layout.scatter(&obj, &mut zviews, block).unwrap();
            let mut again = vec![0u8; obj.len()];
            let zv: Vec<&[u8]> = zero.iter().map(|l| l.as_slice()).collect();
            layout.gather(&zv, block, &mut again).unwrap();
            prop_assert_eq!(&again, &obj);
            let ranges = layout.block_ranges(block).unwrap();
            for l in &zero {
                for (i, byte) in l.iter().enumerate() {
                    if !ranges.iter().any(|r| r.contains(&i)) { prop_assert_eq!(*byte, 0); }
                }
            }
        }
    }
}

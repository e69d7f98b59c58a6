//! Block keys: the portable, versioned names of KV blocks (spec: `docs/key-spec.md`).
//!
//! A [`Namespace`] is the 128-bit digest of everything that changes the KV bytes of a token
//! besides the tokens themselves (model, revision, dtype, layout, block size, parallel rank,
//! tenant salt). Block keys chain from it: `key[i] = xxh3_128(key[i-1] ‖ tokens ‖ extra[i])`.
//! Equal keys are the only way two requests share KV, so anything that differs in the namespace
//! can never collide into a hit.

use std::fmt;

use xxhash_rust::xxh3::xxh3_128;

use crate::dtype::KvDtype;
use crate::error::{Error, Result};

/// The version of the key spec implemented here. Part of every namespace, so keys of different
/// spec versions never meet.
pub const KEY_SPEC_VERSION: u32 = 1;

/// Prefix of the canonical namespace encoding (16 ASCII bytes).
const NAMESPACE_MAGIC: &[u8; 16] = b"kvtier-namespace";

/// Longest string or salt accepted in a namespace (bytes).
pub const MAX_NAMESPACE_FIELD: usize = 4096;

/// The key of one full block of tokens: a 128-bit chained digest. Never a bare integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(transparent)]
pub struct BlockKey(u128);

impl BlockKey {
    /// Wraps a raw 128-bit value (as read from a header or the wire).
    pub const fn from_u128(v: u128) -> Self {
        BlockKey(v)
    }

    /// The raw value (for headers and the wire).
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The 16 little-endian bytes that are chained into the next key.
    pub fn to_le_bytes(self) -> [u8; 16] {
        self.0.to_le_bytes()
    }

    /// Parses 32 hexadecimal digits (the `Display` form).
    pub fn from_hex(s: &str) -> Result<Self> {
        if s.len() != 32 {
            return Err(
                Error::invalid("a block key is 32 hexadecimal digits").with_context("got", s)
            );
        }
        u128::from_str_radix(s, 16)
            .map(BlockKey)
            .map_err(|e| Error::invalid("a block key is 32 hexadecimal digits").with_source(e))
    }
}

impl fmt::Display for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for BlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockKey({:032x})", self.0)
    }
}

/// Everything that goes into a namespace. See `docs/key-spec.md` for the byte encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceParams {
    /// Model identity, e.g. `meta-llama/Llama-3.1-8B-Instruct`. Must not be empty.
    pub model: String,
    /// Weights revision (commit hash or version tag). May be empty when unknown.
    pub revision: String,
    /// Element type of the KV cache.
    pub kv_dtype: KvDtype,
    /// Engine layout id, e.g. `vllm-cpu` (see [`crate::layout::LayoutKind::id`]).
    pub layout_id: String,
    /// Tokens per block; at least 1.
    pub tokens_per_block: u32,
    /// Tensor-parallel world size (at least 1) and this rank (< size).
    pub tp_size: u32,
    /// Tensor-parallel rank.
    pub tp_rank: u32,
    /// Pipeline-parallel world size (at least 1).
    pub pp_size: u32,
    /// Pipeline-parallel rank (< size).
    pub pp_rank: u32,
    /// Tenant / cache salt: requests with different salts never share KV. Empty for none.
    pub salt: Vec<u8>,
}

impl NamespaceParams {
    /// Parameters for a single-rank engine (TP = PP = 1) with no tenant salt; set the other
    /// fields directly where they differ.
    pub fn new(
        model: impl Into<String>,
        kv_dtype: KvDtype,
        layout_id: impl Into<String>,
        tokens_per_block: u32,
    ) -> Self {
        NamespaceParams {
            model: model.into(),
            revision: String::new(),
            kv_dtype,
            layout_id: layout_id.into(),
            tokens_per_block,
            tp_size: 1,
            tp_rank: 0,
            pp_size: 1,
            pp_rank: 0,
            salt: Vec::new(),
        }
    }

    /// Checks every field and names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if self.model.is_empty() {
            return Err(Error::invalid("namespace field `model` must not be empty"));
        }
        for (name, len) in [
            ("model", self.model.len()),
            ("revision", self.revision.len()),
            ("layout_id", self.layout_id.len()),
            ("salt", self.salt.len()),
        ] {
            if len > MAX_NAMESPACE_FIELD {
                return Err(Error::invalid(format!(
                    "namespace field `{name}` is {len} bytes; at most {MAX_NAMESPACE_FIELD} allowed"
                )));
            }
        }
        if self.layout_id.is_empty() {
            return Err(Error::invalid(
                "namespace field `layout_id` must not be empty",
            ));
        }
        if self.tokens_per_block == 0 {
            return Err(Error::invalid(
                "namespace field `tokens_per_block` must be at least 1",
            ));
        }
        for (name, rank, size) in [
            ("tp", self.tp_rank, self.tp_size),
            ("pp", self.pp_rank, self.pp_size),
        ] {
            if size == 0 {
                return Err(Error::invalid(format!(
                    "namespace field `{name}_size` must be at least 1"
                )));
            }
            if rank >= size {
                return Err(Error::invalid(format!(
                    "namespace field `{name}_rank` is {rank}; it must be below `{name}_size` ({size})"
                )));
            }
        }
        Ok(())
    }

    /// The canonical byte encoding hashed into the namespace digest (spec section 2).
    pub fn canonical_encoding(&self) -> Vec<u8> {
        fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        let mut out = Vec::with_capacity(128 + self.model.len() + self.salt.len());
        out.extend_from_slice(NAMESPACE_MAGIC);
        out.extend_from_slice(&KEY_SPEC_VERSION.to_le_bytes());
        put_bytes(&mut out, self.model.as_bytes());
        put_bytes(&mut out, self.revision.as_bytes());
        put_bytes(&mut out, self.kv_dtype.name().as_bytes());
        put_bytes(&mut out, self.layout_id.as_bytes());
        for v in [
            self.tokens_per_block,
            self.tp_size,
            self.tp_rank,
            self.pp_size,
            self.pp_rank,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_bytes(&mut out, &self.salt);
        out
    }
}

/// A validated namespace: the root of every key chain, and the block size the chain uses.
///
/// ```
/// use kvtier_core::{KvDtype, Namespace, NamespaceParams};
///
/// let params = NamespaceParams {
///     model: "meta-llama/Llama-3.1-8B-Instruct".into(),
///     revision: "main".into(),
///     kv_dtype: KvDtype::Bf16,
///     layout_id: "vllm-flash".into(),
///     tokens_per_block: 4,
///     tp_size: 1, tp_rank: 0, pp_size: 1, pp_rank: 0,
///     salt: b"tenant-a".to_vec(),
/// };
/// let ns = Namespace::new(&params).unwrap();
/// let keys = ns.block_keys(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
/// assert_eq!(keys.len(), 2); // the partial third block gets no key
///
/// // Another tenant never shares a key with this one.
/// let other = Namespace::new(&NamespaceParams { salt: b"tenant-b".to_vec(), ..params }).unwrap();
/// assert_ne!(other.block_keys(&[1, 2, 3, 4])[0], keys[0]);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Namespace {
    digest: BlockKey,
    tokens_per_block: u32,
}

/// Extra key material of one block: items that change the KV for the same tokens (a LoRA
/// adapter name, multimodal content hashes). Order matters.
pub type BlockExtra<'a> = &'a [&'a [u8]];

impl Namespace {
    /// Validates `params` and computes the namespace digest.
    pub fn new(params: &NamespaceParams) -> Result<Self> {
        params.validate()?;
        Ok(Namespace {
            digest: BlockKey(xxh3_128(&params.canonical_encoding())),
            tokens_per_block: params.tokens_per_block,
        })
    }

    /// The namespace digest, which is `key[-1]` of every chain.
    pub fn digest(&self) -> BlockKey {
        self.digest
    }

    /// Tokens per block.
    pub fn tokens_per_block(&self) -> u32 {
        self.tokens_per_block
    }

    /// Keys of every full block of `tokens` (a partial last block gets none).
    pub fn block_keys(&self, tokens: &[u32]) -> Vec<BlockKey> {
        let mut out = Vec::with_capacity(tokens.len() / self.tokens_per_block as usize);
        self.extend_keys(self.digest, tokens, &[], &mut out)
            .expect("no extras cannot be inconsistent");
        out
    }

    /// Keys of every full block, with per-block extra keys: `extras[i]` belongs to block `i`;
    /// blocks past `extras.len()` have none. More extras than blocks (counting a partial last
    /// block) is an error, since it means the caller's block accounting is off.
    pub fn block_keys_with_extras(
        &self,
        tokens: &[u32],
        extras: &[BlockExtra<'_>],
    ) -> Result<Vec<BlockKey>> {
        let mut out = Vec::with_capacity(tokens.len() / self.tokens_per_block as usize);
        self.extend_keys(self.digest, tokens, extras, &mut out)?;
        Ok(out)
    }

    /// Continues a chain: appends to `out` the keys of the full blocks of `tokens`, which follow
    /// the block whose key is `parent` (use [`Namespace::digest`] for the first block).
    pub fn extend_keys(
        &self,
        parent: BlockKey,
        tokens: &[u32],
        extras: &[BlockExtra<'_>],
        out: &mut Vec<BlockKey>,
    ) -> Result<()> {
        let b = self.tokens_per_block as usize;
        let blocks_incl_partial = tokens.len().div_ceil(b);
        if extras.len() > blocks_incl_partial {
            return Err(Error::invalid(format!(
                "{} extra-key entries for {} tokens ({} blocks of {b}): at most one entry per block",
                extras.len(),
                tokens.len(),
                blocks_incl_partial
            )));
        }
        // Sized by the tokens there are, not by the block size alone: a huge tokens_per_block
        // with a short prompt must not allocate gigabytes (found by the abi_args fuzz target).
        let mut buf = Vec::with_capacity(16 + 4 * b.min(tokens.len()) + 64);
        let mut prev = parent;
        for (i, chunk) in tokens.chunks_exact(b).enumerate() {
            buf.clear();
            buf.extend_from_slice(&prev.to_le_bytes());
            push_tokens_le(&mut buf, chunk);
            if let Some(items) = extras.get(i) {
                for item in items.iter() {
                    buf.extend_from_slice(&(item.len() as u32).to_le_bytes());
                    buf.extend_from_slice(item);
                }
            }
            prev = BlockKey(xxh3_128(&buf));
            out.push(prev);
        }
        Ok(())
    }
}

#[cfg(target_endian = "little")]
fn push_tokens_le(buf: &mut Vec<u8>, tokens: &[u32]) {
    buf.extend_from_slice(bytemuck::cast_slice(tokens));
}

#[cfg(not(target_endian = "little"))]
fn push_tokens_le(buf: &mut Vec<u8>, tokens: &[u32]) {
    for t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn params() -> NamespaceParams {
        NamespaceParams {
            model: "test/model".into(),
            revision: "r1".into(),
            kv_dtype: KvDtype::Bf16,
            layout_id: "vllm-cpu".into(),
            tokens_per_block: 4,
            tp_size: 1,
            tp_rank: 0,
            pp_size: 1,
            pp_rank: 0,
            salt: Vec::new(),
        }
    }

    #[test]
    fn a_huge_block_size_with_a_short_prompt_allocates_nothing_big() {
        // 4 x u32::MAX bytes of buffer were reserved per call before (an abort on most hosts).
        let ns = Namespace::new(&NamespaceParams {
            tokens_per_block: u32::MAX,
            ..params()
        })
        .unwrap();
        assert!(ns.block_keys(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn partial_and_empty_prompts() {
        let ns = Namespace::new(&params()).unwrap();
        assert!(ns.block_keys(&[]).is_empty());
        assert!(ns.block_keys(&[1, 2, 3]).is_empty());
        assert_eq!(ns.block_keys(&[1, 2, 3, 4, 5]).len(), 1);
        assert_eq!(
            ns.block_keys(&[1, 2, 3, 4, 5])[0],
            ns.block_keys(&[1, 2, 3, 4])[0]
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut p = params();
        p.tp_rank = 2;
        p.tp_size = 2;
        let e = Namespace::new(&p).unwrap_err();
        assert!(e.to_string().contains("tp_rank"), "{e}");
        let mut p = params();
        p.tokens_per_block = 0;
        assert!(Namespace::new(&p)
            .unwrap_err()
            .to_string()
            .contains("tokens_per_block"));
        let mut p = params();
        p.model.clear();
        assert!(Namespace::new(&p)
            .unwrap_err()
            .to_string()
            .contains("`model`"));
    }

    #[test]
    fn too_many_extras_is_an_error() {
        let ns = Namespace::new(&params()).unwrap();
        let e: &[&[u8]] = &[b"lora"];
        assert!(ns.block_keys_with_extras(&[1, 2, 3, 4, 5], &[e, e]).is_ok());
        assert!(ns
            .block_keys_with_extras(&[1, 2, 3, 4, 5], &[e, e, e])
            .is_err());
    }

    #[test]
    fn hex_round_trip() {
        let k = BlockKey::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(BlockKey::from_hex(&k.to_string()).unwrap(), k);
        assert!(BlockKey::from_hex("xyz").is_err());
    }

    proptest! {
        /// Keys chain: a prompt's keys are a prefix of a longer prompt's keys, and continuing a
        /// chain from its last key gives the same keys as hashing the whole prompt.
        #[test]
        fn chaining_is_prefix_stable(tokens in proptest::collection::vec(any::<u32>(), 0..64),
                                     more in proptest::collection::vec(any::<u32>(), 0..64)) {
            let ns = Namespace::new(&params()).unwrap();
            let short = ns.block_keys(&tokens);
            let mut all = tokens.clone();
            all.extend_from_slice(&more);
            let long = ns.block_keys(&all);
            prop_assert_eq!(&long[..short.len()], &short[..]);
            prop_assert_eq!(long.len(), all.len() / 4);
            let cut = short.len() * 4;
            let mut cont = short.clone();
            let parent = short.last().copied().unwrap_or(ns.digest());
            ns.extend_keys(parent, &all[cut..], &[], &mut cont).unwrap();
            prop_assert_eq!(cont, long);
        }

        /// Changing one token changes the key of its block and of every block after it, and no
        /// key before it.
        #[test]
        fn a_token_change_moves_its_block_and_descendants(
            tokens in proptest::collection::vec(any::<u32>(), 4..64), pos in any::<prop::sample::Index>()) {
            let ns = Namespace::new(&params()).unwrap();
            let i = pos.index(tokens.len());
            let mut other = tokens.clone();
            other[i] = other[i].wrapping_add(1);
            let a = ns.block_keys(&tokens);
            let b = ns.block_keys(&other);
            for (j, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                if j < i / 4 { prop_assert_eq!(x, y); } else { prop_assert_ne!(x, y); }
            }
        }
    }
}

//! `kvtier keys`: print the block keys of a token sequence (the key spec, docs/key-spec.md).

use clap::Args;
use kvtier_core::error::Result;
use kvtier_core::{KvDtype, Namespace, NamespaceParams};

#[derive(Args)]
pub struct KeysArgs {
    /// Model identity.
    #[arg(long)]
    model: String,
    /// Weights revision.
    #[arg(long, default_value = "")]
    revision: String,
    /// KV dtype (float16, bfloat16, float32, fp8_e4m3, fp8_e5m2).
    #[arg(long, default_value = "bfloat16")]
    dtype: String,
    /// Engine layout id (vllm-flash, vllm-cpu, layer-major).
    #[arg(long, default_value = "vllm-flash")]
    layout: String,
    /// Tokens per block.
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// Tensor-parallel size and rank.
    #[arg(long, default_value_t = 1)]
    tp_size: u32,
    #[arg(long, default_value_t = 0)]
    tp_rank: u32,
    /// Pipeline-parallel size and rank.
    #[arg(long, default_value_t = 1)]
    pp_size: u32,
    #[arg(long, default_value_t = 0)]
    pp_rank: u32,
    /// Tenant / cache salt.
    #[arg(long, default_value = "")]
    salt: String,
    /// Token ids.
    tokens: Vec<u32>,
}

pub fn run(a: KeysArgs) -> Result<()> {
    let ns = Namespace::new(&NamespaceParams {
        model: a.model,
        revision: a.revision,
        kv_dtype: KvDtype::parse(&a.dtype)?,
        layout_id: a.layout,
        tokens_per_block: a.block_size,
        tp_size: a.tp_size,
        tp_rank: a.tp_rank,
        pp_size: a.pp_size,
        pp_rank: a.pp_rank,
        salt: a.salt.into_bytes(),
    })
    .map_err(|e| e.with_context("while", "building the namespace"))?;
    println!("namespace {}", ns.digest());
    for (i, k) in ns.block_keys(&a.tokens).iter().enumerate() {
        println!("block {i} {k}");
    }
    Ok(())
}

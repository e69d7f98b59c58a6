//! The element types of a KV cache.

use crate::error::{Error, Result};

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// IEEE single precision.
    F32,
    /// FP8 E4M3.
    Fp8E4m3,
    /// FP8 E5M2.
    Fp8E5m2,
}

impl KvDtype {
    /// Canonical name, as hashed into namespaces and layout digests.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "float16",
            KvDtype::Bf16 => "bfloat16",
            KvDtype::F32 => "float32",
            KvDtype::Fp8E4m3 => "fp8_e4m3",
            KvDtype::Fp8E5m2 => "fp8_e5m2",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            KvDtype::F16 | KvDtype::Bf16 => 2,
            KvDtype::F32 => 4,
            KvDtype::Fp8E4m3 | KvDtype::Fp8E5m2 => 1,
        }
    }

    /// Parses a canonical name or a common alias (`fp16`, `half`, `bf16`, `fp32`, `float`,
    /// `fp8`, `fp8_e4m3`, `fp8_e5m2`, and torch's `torch.bfloat16` style).
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().trim_start_matches("torch.").to_ascii_lowercase();
        Ok(match t.as_str() {
            "float16" | "fp16" | "half" | "f16" => KvDtype::F16,
            "bfloat16" | "bf16" => KvDtype::Bf16,
            "float32" | "fp32" | "float" | "f32" => KvDtype::F32,
            "fp8" | "fp8_e4m3" | "float8_e4m3fn" => KvDtype::Fp8E4m3,
            "fp8_e5m2" | "float8_e5m2" => KvDtype::Fp8E5m2,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown KV dtype `{s}`; expected one of float16, bfloat16, float32, fp8_e4m3, fp8_e5m2"
                )))
            }
        })
    }
}

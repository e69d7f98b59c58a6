//! libkvtier: the C ABI that inference engines link (`kvt_` prefix).
//!
//! This crate grows with the agent; today it exports the ABI version so that engines and
//! bindings can check what they loaded.

/// The ABI version. Bumped on every incompatible change to `ffi/include/kvtier.h`.
pub const KVT_ABI_VERSION: u32 = 1;

/// Returns the ABI version of this library ([`KVT_ABI_VERSION`]).
#[no_mangle]
pub extern "C" fn kvt_abi_version() -> u32 {
    KVT_ABI_VERSION
}

/// Keeps the core crate linked (the ABI is built on it).
#[doc(hidden)]
pub fn core_spec_version() -> u32 {
    kvtier_core::key::KEY_SPEC_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_version_is_exported_and_current() {
        assert_eq!(kvt_abi_version(), KVT_ABI_VERSION);
        assert_eq!(core_spec_version(), 1);
    }
}

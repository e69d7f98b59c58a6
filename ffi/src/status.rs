//! Status codes, the thread-local last error, and the guard every exported function runs in.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use kvtier_core::{Error, ErrorKind};

/// A status code: `KVT_OK` (0) or one of the `KVT_ERR_*` codes. Codes are never renumbered or
/// reused.
pub type kvt_status = c_int;

/// Success.
pub const KVT_OK: kvt_status = 0;
/// A required pointer argument was NULL.
pub const KVT_ERR_NULL: kvt_status = 1;
/// An argument is out of range or inconsistent (a length, a rank, a layout field).
pub const KVT_ERR_INVALID: kvt_status = 2;
/// The named thing does not exist.
pub const KVT_ERR_NOT_FOUND: kvt_status = 3;
/// A capacity bound was reached.
pub const KVT_ERR_NO_SPACE: kvt_status = 4;
/// Bytes failed verification.
pub const KVT_ERR_CORRUPT: kvt_status = 5;
/// The agent or a peer is not reachable; treat as a miss.
pub const KVT_ERR_UNAVAILABLE: kvt_status = 6;
/// A deadline passed; treat as a miss.
pub const KVT_ERR_TIMEOUT: kvt_status = 7;
/// An I/O error.
pub const KVT_ERR_IO: kvt_status = 8;
/// The operating system refused (permissions, read-only file system).
pub const KVT_ERR_PERMISSION: kvt_status = 9;
/// The handle was closed.
pub const KVT_ERR_CLOSED: kvt_status = 10;
/// A bug inside libkvtier (a caught panic); the call had no effect you can rely on.
pub const KVT_ERR_INTERNAL: kvt_status = 11;

/// A short, static name for a status code (`"KVT_OK"`, `"KVT_ERR_NULL"`, ..., `"KVT_UNKNOWN"`).
#[no_mangle]
pub extern "C" fn kvt_status_name(status: kvt_status) -> *const c_char {
    let s: &'static [u8] = match status {
        KVT_OK => b"KVT_OK\0",
        KVT_ERR_NULL => b"KVT_ERR_NULL\0",
        KVT_ERR_INVALID => b"KVT_ERR_INVALID\0",
        KVT_ERR_NOT_FOUND => b"KVT_ERR_NOT_FOUND\0",
        KVT_ERR_NO_SPACE => b"KVT_ERR_NO_SPACE\0",
        KVT_ERR_CORRUPT => b"KVT_ERR_CORRUPT\0",
        KVT_ERR_UNAVAILABLE => b"KVT_ERR_UNAVAILABLE\0",
        KVT_ERR_TIMEOUT => b"KVT_ERR_TIMEOUT\0",
        KVT_ERR_IO => b"KVT_ERR_IO\0",
        KVT_ERR_PERMISSION => b"KVT_ERR_PERMISSION\0",
        KVT_ERR_CLOSED => b"KVT_ERR_CLOSED\0",
        KVT_ERR_INTERNAL => b"KVT_ERR_INTERNAL\0",
        _ => b"KVT_UNKNOWN\0",
    };
    s.as_ptr().cast()
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// The message of the last failed `kvt_` call on this thread (empty after a success). The
/// pointer stays valid until the next `kvt_` call on this thread.
#[no_mangle]
pub extern "C" fn kvt_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// An error on its way out through the ABI.
#[derive(Debug)]
pub struct FfiError {
    /// The status to return.
    pub status: kvt_status,
    /// The message for [`kvt_last_error`].
    pub message: String,
}

impl FfiError {
    /// A NULL pointer where one is required: names the argument.
    pub fn null(arg: &str) -> Self {
        FfiError {
            status: KVT_ERR_NULL,
            message: format!("`{arg}` must not be NULL"),
        }
    }

    /// An invalid argument.
    pub fn invalid(message: impl Into<String>) -> Self {
        FfiError {
            status: KVT_ERR_INVALID,
            message: message.into(),
        }
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::NotFound => KVT_ERR_NOT_FOUND,
            ErrorKind::NoSpace => KVT_ERR_NO_SPACE,
            ErrorKind::Corrupt => KVT_ERR_CORRUPT,
            ErrorKind::InvalidArgument => KVT_ERR_INVALID,
            ErrorKind::Unavailable => KVT_ERR_UNAVAILABLE,
            ErrorKind::Timeout => KVT_ERR_TIMEOUT,
            ErrorKind::PermissionDenied => KVT_ERR_PERMISSION,
            ErrorKind::Io => KVT_ERR_IO,
        };
        FfiError {
            status,
            message: e.to_string(),
        }
    }
}

/// Runs an exported function's body: maps its error to a status and the thread's last error,
/// and turns a panic into `KVT_ERR_INTERNAL` instead of unwinding into C.
pub fn guard(f: impl FnOnce() -> Result<(), FfiError>) -> kvt_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("");
            KVT_OK
        }
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error in libkvtier (please report): {what}"
            ));
            KVT_ERR_INTERNAL
        }
    }
}

/// Borrows a required pointer argument.
///
/// # Safety
/// `p` must be NULL or valid for reads of `T` for the duration of the call.
pub unsafe fn arg<'a, T>(p: *const T, name: &str) -> Result<&'a T, FfiError> {
    // SAFETY: the caller promises validity when non-NULL.
    unsafe { p.as_ref() }.ok_or_else(|| FfiError::null(name))
}

/// Borrows a C string argument as UTF-8.
///
/// # Safety
/// `p` must be NULL or a valid NUL-terminated string for the duration of the call.
pub unsafe fn str_arg<'a>(p: *const c_char, name: &str) -> Result<&'a str, FfiError> {
    if p.is_null() {
        return Err(FfiError::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated per the contract.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| FfiError::invalid(format!("`{name}` is not valid UTF-8")))
}

/// Borrows `len` elements at `p` (a NULL `p` is allowed only when `len` is 0).
///
/// # Safety
/// `p` must be valid for reads of `len` elements for the duration of the call.
pub unsafe fn slice_arg<'a, T>(p: *const T, len: usize, name: &str) -> Result<&'a [T], FfiError> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(FfiError::null(name));
    }
    // SAFETY: per the contract.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        unsafe { CStr::from_ptr(kvt_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn guard_maps_errors_and_panics() {
        assert_eq!(guard(|| Ok(())), KVT_OK);
        assert_eq!(last(), "");
        assert_eq!(guard(|| Err(FfiError::null("tokens"))), KVT_ERR_NULL);
        assert_eq!(last(), "`tokens` must not be NULL");
        assert_eq!(
            guard(|| Err(Error::no_space("full").into())),
            KVT_ERR_NO_SPACE
        );
        let s = guard(|| panic!("boom"));
        assert_eq!(s, KVT_ERR_INTERNAL);
        assert!(last().contains("boom"));
        let name = unsafe { CStr::from_ptr(kvt_status_name(KVT_ERR_CLOSED)) };
        assert_eq!(name.to_str().unwrap(), "KVT_ERR_CLOSED");
        assert_eq!(
            unsafe { CStr::from_ptr(kvt_status_name(999)) }
                .to_str()
                .unwrap(),
            "KVT_UNKNOWN"
        );
    }
}

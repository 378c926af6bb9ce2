//! Copies and clears of plain-integer structs as whole words, for the kernel programs.
//!
//! A struct assignment or a run of adjacent field stores may reach the BPF backend as a call of
//! `memmove`, `memcpy` or `memset`, which aya-ebpf implements one byte at a time (some seven
//! instructions a byte, and a BPF call): the 16-byte sequence facts a transition writes back
//! cost ~120 instructions that way, and clearing a step's six flag bytes ~45 (measured with
//! `bpftool prog dump xlated`). Volatile word accesses are never merged into such a call; the
//! loops below have constant trip counts and unroll. The daemon's host test
//! `only_kernel_logging_calls_the_byte_at_a_time_copies` finds any such call left in the object.

/// Copies `*src` into `*dst`, eight bytes at a time when both are 8-byte aligned, else four.
///
/// # Safety
/// Both pointers valid for their type and aligned; `T` made of plain integers (any bit pattern
/// valid) with a size that is a multiple of four.
#[inline(always)]
pub unsafe fn copy<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(4)) };
    if core::mem::align_of::<T>() >= 8 && core::mem::size_of::<T>().is_multiple_of(8) {
        let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
        for i in 0..core::mem::size_of::<T>() / 8 {
            // SAFETY: within `*dst` and `*src`, 8-byte aligned (checked above).
            unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        }
    } else {
        const { assert!(core::mem::align_of::<T>() >= 4) };
        let (d, s) = (dst.cast::<u32>(), src.cast::<u32>());
        for i in 0..core::mem::size_of::<T>() / 4 {
            // SAFETY: within `*dst` and `*src`, 4-byte aligned (asserted above).
            unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        }
    }
}

/// `*src`, read as [`copy`] reads it.
///
/// # Safety
/// As for [`copy`].
#[inline(always)]
pub unsafe fn read<T: Copy>(src: *const T) -> T {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: forwarded; every word of `v` is written before it is read.
    unsafe {
        copy(v.as_mut_ptr(), src);
        v.assume_init()
    }
}

/// Zeroes `*dst` as [`copy`] writes it.
///
/// # Safety
/// As for [`copy`]; all-zero must be a valid `T`.
#[inline(always)]
pub unsafe fn zero<T: Copy>(dst: *mut T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(4) && core::mem::align_of::<T>() >= 4) };
    let d = dst.cast::<u32>();
    for i in 0..core::mem::size_of::<T>() / 4 {
        // SAFETY: within `*dst`, 4-byte aligned.
        unsafe { core::ptr::write_volatile(d.add(i), 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::EndpointSeq;

    #[test]
    fn words_copy_read_and_zero_whole_structs() {
        let a = EndpointSeq {
            isn: 1,
            end: 2,
            ack: 3,
            win: 4,
        };
        let mut b = EndpointSeq::default();
        unsafe { copy(&mut b, &a) };
        assert_eq!(a, b);
        let since = [7u64, u64::MAX];
        assert_eq!(unsafe { read(&since) }, since);
        unsafe { zero(&mut b) };
        assert_eq!(b, EndpointSeq::default());
    }
}

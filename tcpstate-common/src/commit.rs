//! Writing a [`Step`] back into a record shared by CPUs.
//!
//! XDP (ingress) and TC (egress) for the same connection run on different CPUs. The state word is
//! replaced by compare-and-swap, so of two racing transitions one wins and the other is recomputed
//! from the winner's result (state counters stay exact). The sequence facts are written after the
//! word: each describes what one endpoint sent (see `EndpointSeq` for the two exceptions), and a
//! reply to a segment can only be observed after that segment's program run has finished, so no
//! reader depends on a fact written by a transition still in flight.

use crate::{
    flow::{FlowRecord, Side},
    state::{write, Step},
};

/// Writes the parts of `st.rec` that `st.write` names into `*dst`. Returns `false`, having written
/// nothing, when the word no longer equals `expected_word`, or the step was computed from another
/// word (another CPU moved the flow first): the caller reads the record again and recomputes.
///
/// # Safety
/// `dst` must point to a live, 8-byte-aligned `FlowRecord` (a map value, or a local in tests).
#[inline(always)]
pub unsafe fn commit(dst: *mut FlowRecord, expected_word: u64, st: &Step) -> bool {
    let w = st.write;
    // A step that keeps the word is checked by no compare-and-swap: it must at least have been
    // computed from `expected_word`. The step runs on the record in place, and another CPU may
    // have replaced the word after the caller read it; the caller would then count the
    // difference between the two words as this step's transition.
    if w & write::WORD == 0 && st.rec.word != expected_word {
        return false;
    }
    if w & write::WORD != 0 {
        // SAFETY: the caller guarantees a live, aligned record; `word` is its first field (offset 0).
        if !unsafe {
            compare_and_swap(
                core::ptr::addr_of_mut!((*dst).word),
                expected_word,
                st.rec.word,
            )
        } {
            return false;
        }
    }
    // SAFETY: as above; plain field stores into the caller's record.
    unsafe {
        for side in [Side::A, Side::B] {
            if w & write::seq(side) != 0 {
                crate::words::copy(&raw mut (*dst).seq[side.index()], &st.rec.seq[side.index()]);
            }
            if w & write::since(side) != 0 {
                (*dst).since_ns[side.index()] = st.rec.since_ns[side.index()];
            }
        }
        if w & write::SYN_NS != 0 {
            (*dst).syn_ns = st.rec.syn_ns;
        }
        if w & write::LAST_SEEN != 0 {
            (*dst).last_seen = st.rec.last_seen;
        }
        if w & write::STALL != 0 {
            (*dst).stall_tick = st.rec.stall_tick;
        }
    }
    true
}

/// A word the flow table and the records share between CPUs: `u64` (state words, counters, the
/// table's pair of control words) or `u32` (one control word, read with [`load`]). On the BPF
/// target the operations below are the `core::intrinsics` atomics, which emit BPF_ATOMIC
/// instructions of the word's width; the object is built for the base instruction set, where
/// only the 64-bit ones exist (a 32-bit read-modify-write fails to build; see
/// `crate::table::pair`). On the host they are the `core::sync::atomic` types.
pub trait Word: Copy + Eq + sealed::Sealed {
    #[doc(hidden)]
    #[cfg(not(target_arch = "bpf"))]
    type Atomic;
    #[doc(hidden)]
    #[cfg(not(target_arch = "bpf"))]
    /// # Safety
    /// As for the function using it.
    unsafe fn atomic<'a>(p: *mut Self) -> &'a Self::Atomic;
    #[doc(hidden)]
    #[cfg(not(target_arch = "bpf"))]
    fn host_cas(a: &Self::Atomic, old: Self, new: Self) -> bool;
    #[doc(hidden)]
    #[cfg(not(target_arch = "bpf"))]
    fn host_or(a: &Self::Atomic, v: Self) -> Self;
    #[doc(hidden)]
    #[cfg(not(target_arch = "bpf"))]
    fn host_and(a: &Self::Atomic, v: Self) -> Self;
    #[doc(hidden)]
    #[cfg(not(target_arch = "bpf"))]
    fn host_xor(a: &Self::Atomic, v: Self) -> Self;
    #[doc(hidden)]
    #[cfg(not(target_arch = "bpf"))]
    fn host_swap(a: &Self::Atomic, v: Self);
    #[doc(hidden)]
    #[cfg(not(target_arch = "bpf"))]
    fn host_load(a: &Self::Atomic) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

macro_rules! word {
    ($t:ty, $atomic:ty) => {
        impl Word for $t {
            #[cfg(not(target_arch = "bpf"))]
            type Atomic = $atomic;
            #[cfg(not(target_arch = "bpf"))]
            #[inline(always)]
            unsafe fn atomic<'a>(p: *mut Self) -> &'a $atomic {
                // SAFETY: forwarded from the caller (valid, aligned, shared only atomically).
                unsafe { <$atomic>::from_ptr(p) }
            }
            #[cfg(not(target_arch = "bpf"))]
            #[inline(always)]
            fn host_cas(a: &$atomic, old: Self, new: Self) -> bool {
                use core::sync::atomic::Ordering::SeqCst;
                a.compare_exchange(old, new, SeqCst, SeqCst).is_ok()
            }
            #[cfg(not(target_arch = "bpf"))]
            #[inline(always)]
            fn host_or(a: &$atomic, v: Self) -> Self {
                a.fetch_or(v, core::sync::atomic::Ordering::SeqCst)
            }
            #[cfg(not(target_arch = "bpf"))]
            #[inline(always)]
            fn host_and(a: &$atomic, v: Self) -> Self {
                a.fetch_and(v, core::sync::atomic::Ordering::SeqCst)
            }
            #[cfg(not(target_arch = "bpf"))]
            #[inline(always)]
            fn host_xor(a: &$atomic, v: Self) -> Self {
                a.fetch_xor(v, core::sync::atomic::Ordering::SeqCst)
            }
            #[cfg(not(target_arch = "bpf"))]
            #[inline(always)]
            fn host_swap(a: &$atomic, v: Self) {
                a.swap(v, core::sync::atomic::Ordering::SeqCst);
            }
            #[cfg(not(target_arch = "bpf"))]
            #[inline(always)]
            fn host_load(a: &$atomic) -> Self {
                a.load(core::sync::atomic::Ordering::Acquire)
            }
        }
    };
}
word!(u64, core::sync::atomic::AtomicU64);
word!(u32, core::sync::atomic::AtomicU32);

/// Compare-and-swap. The bpfel target declares no CAS to `core` (ISA v1 has none), so
/// `AtomicU64::compare_exchange` does not exist there; the intrinsic emits BPF_CMPXCHG, which the
/// object is built for (bpf-linker `--cpu=v3`, kernel 5.12+: commit 5ffa25502b5a "bpf: Add
/// instructions for atomic_[cmp]xchg").
///
/// # Safety
/// `p` must be valid for reads and writes and aligned to its width.
#[inline(always)]
pub unsafe fn compare_and_swap<T: Word>(p: *mut T, old: T, new: T) -> bool {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::SeqCst;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_cxchg::<T, { SeqCst }, { SeqCst }>(p, old, new).1 }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        T::host_cas(unsafe { T::atomic(p) }, old, new)
    }
}

/// 64-bit atomic add (BPF_ATOMIC | BPF_ADD; on the BPF target `core` offers no `fetch_add`).
///
/// # Safety
/// `p` must be valid for reads and writes and 8-byte aligned.
#[inline(always)]
pub unsafe fn atomic_add(p: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::Relaxed;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { Relaxed }>(p, v) };
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: forwarded from the caller.
        unsafe { AtomicU64::from_ptr(p) }.fetch_add(v, Ordering::Relaxed);
    }
}

/// Atomic OR, AND and XOR returning the previous value (BPF_ATOMIC | BPF_FETCH, ISA v3), for the
/// flow table's neighbourhood words ([`crate::table`]).
///
/// # Safety
/// `p` must be valid for reads and writes and aligned to its width.
#[inline(always)]
pub unsafe fn fetch_or<T: Word>(p: *mut T, v: T) -> T {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::SeqCst;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_or::<T, T, { SeqCst }>(p, v) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        T::host_or(unsafe { T::atomic(p) }, v)
    }
}

/// See [`fetch_or`].
///
/// # Safety
/// `p` must be valid for reads and writes and aligned to its width.
#[inline(always)]
pub unsafe fn fetch_and<T: Word>(p: *mut T, v: T) -> T {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::SeqCst;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_and::<T, T, { SeqCst }>(p, v) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        T::host_and(unsafe { T::atomic(p) }, v)
    }
}

/// See [`fetch_or`].
///
/// # Safety
/// `p` must be valid for reads and writes and aligned to its width.
#[inline(always)]
pub unsafe fn fetch_xor<T: Word>(p: *mut T, v: T) -> T {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::SeqCst;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_xor::<T, T, { SeqCst }>(p, v) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        T::host_xor(unsafe { T::atomic(p) }, v)
    }
}

/// Stores `v` with a full barrier (BPF_XCHG), so every plain store before it is visible to any
/// CPU that reads `v`: how the flow table publishes a slot after writing its key and record.
///
/// # Safety
/// `p` must be valid for reads and writes and aligned to its width.
#[inline(always)]
pub unsafe fn publish<T: Word>(p: *mut T, v: T) {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::SeqCst;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_xchg::<T, { SeqCst }>(p, v) };
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        T::host_swap(unsafe { T::atomic(p) }, v)
    }
}

/// Reads a word other CPUs write, fresh from memory (the compiler may not reuse an earlier read).
///
/// # Safety
/// `p` must be valid for reads and aligned to its width.
#[inline(always)]
pub unsafe fn load<T: Word>(p: *const T) -> T {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: forwarded from the caller. BPF ISA v3 has no load-acquire; on the JITs of
        // strongly ordered CPUs (x86) a plain load after the publishing XCHG is ordered.
        unsafe { core::ptr::read_volatile(p) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: forwarded from the caller.
        T::host_load(unsafe { T::atomic(p as *mut T) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::FlowWord;

    /// A step that keeps the word (a refresh of `last_seen`), computed from the record after
    /// another CPU had moved its word on: committing it against the word the caller read first
    /// would book the other CPU's transition twice, so it is refused and nothing is written.
    #[test]
    fn a_step_computed_from_a_newer_word_than_expected_is_refused() {
        let old = FlowWord {
            counted: 1,
            ..FlowWord::default()
        };
        let newer = FlowWord {
            counted: 1,
            pending: 1,
            ..FlowWord::default()
        };
        let mut dst = FlowRecord::default();
        dst.set_word(newer);
        let mut st = Step::EMPTY;
        st.rec = dst;
        st.rec.last_seen = 9;
        st.write = write::LAST_SEEN;
        // SAFETY: a local record.
        assert!(!unsafe { commit(&mut dst, old.to_bits(), &st) });
        assert_eq!(dst.last_seen, 0, "nothing written");
        // Against the word it was computed from, it goes through.
        assert!(unsafe { commit(&mut dst, newer.to_bits(), &st) });
        assert_eq!(dst.last_seen, 9);
    }
}

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

/// 64-bit compare-and-swap. The bpfel target declares no CAS to `core` (ISA v1 has none), so
/// `AtomicU64::compare_exchange` does not exist there; the intrinsic emits BPF_CMPXCHG, which the
/// object is built for (bpf-linker `--cpu=v3`, kernel 5.12+: commit 5ffa25502b5a "bpf: Add
/// instructions for atomic_[cmp]xchg").
///
/// # Safety
/// `p` must be valid for reads and writes and 8-byte aligned.
#[inline(always)]
pub unsafe fn compare_and_swap(p: *mut u64, old: u64, new: u64) -> bool {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::SeqCst;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(p, old, new).1 }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: forwarded from the caller.
        unsafe { AtomicU64::from_ptr(p) }
            .compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
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

/// 64-bit atomic OR, AND and XOR returning the previous value (BPF_ATOMIC | BPF_FETCH, ISA v3),
/// for the flow table's neighbourhood words ([`crate::table`]).
///
/// # Safety
/// `p` must be valid for reads and writes and 8-byte aligned.
#[inline(always)]
pub unsafe fn fetch_or(p: *mut u64, v: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::SeqCst;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_or::<u64, u64, { SeqCst }>(p, v) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: forwarded from the caller.
        unsafe { AtomicU64::from_ptr(p) }.fetch_or(v, Ordering::SeqCst)
    }
}

/// See [`fetch_or`].
///
/// # Safety
/// `p` must be valid for reads and writes and 8-byte aligned.
#[inline(always)]
pub unsafe fn fetch_and(p: *mut u64, v: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::SeqCst;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_and::<u64, u64, { SeqCst }>(p, v) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: forwarded from the caller.
        unsafe { AtomicU64::from_ptr(p) }.fetch_and(v, Ordering::SeqCst)
    }
}

/// See [`fetch_or`].
///
/// # Safety
/// `p` must be valid for reads and writes and 8-byte aligned.
#[inline(always)]
pub unsafe fn fetch_xor(p: *mut u64, v: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::SeqCst;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_xor::<u64, u64, { SeqCst }>(p, v) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: forwarded from the caller.
        unsafe { AtomicU64::from_ptr(p) }.fetch_xor(v, Ordering::SeqCst)
    }
}

/// Stores `v` with a full barrier (BPF_XCHG), so every plain store before it is visible to any
/// CPU that reads `v`: how the flow table publishes a slot after writing its key and record.
///
/// # Safety
/// `p` must be valid for reads and writes and 8-byte aligned.
#[inline(always)]
pub unsafe fn publish(p: *mut u64, v: u64) {
    #[cfg(target_arch = "bpf")]
    {
        use core::intrinsics::AtomicOrdering::SeqCst;
        // SAFETY: forwarded from the caller.
        unsafe { core::intrinsics::atomic_xchg::<u64, { SeqCst }>(p, v) };
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: forwarded from the caller.
        unsafe { AtomicU64::from_ptr(p) }.swap(v, Ordering::SeqCst);
    }
}

/// Reads a word other CPUs write, fresh from memory (the compiler may not reuse an earlier read).
///
/// # Safety
/// `p` must be valid for reads and 8-byte aligned.
#[inline(always)]
pub unsafe fn load(p: *const u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: forwarded from the caller. BPF ISA v3 has no load-acquire; on the JITs of
        // strongly ordered CPUs (x86) a plain load after the publishing XCHG is ordered.
        unsafe { core::ptr::read_volatile(p) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: forwarded from the caller.
        unsafe { AtomicU64::from_ptr(p as *mut u64) }.load(Ordering::Acquire)
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

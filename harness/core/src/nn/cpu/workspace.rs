//! Per-thread reuse of f32 scratch buffers.
//!
//! im2col / col2im scratch runs to megabytes per image batch. Allocating it fresh every call
//! makes the allocator hand back newly mapped pages, and the first touch of each 4 KiB page is a
//! page fault (about a tenth of stock candle's training time). Buffers taken here go back to a
//! small pool of the thread they were taken on when dropped, so after the first training step
//! the scratch memory is already mapped and warm in cache. The rayon workers are long-lived, so
//! each keeps its own pool.
//!
//! Tensors handed to candle cannot come from such a pool (candle frees them), so
//! [`tune_allocator`] also keeps glibc from returning freed activation-sized blocks to the kernel:
//! by default blocks above a (dynamic) threshold are `mmap`ed and unmapped on free, so every
//! training step faults in and zeroes its activations and gradients afresh.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers kept per thread; more are freed (the largest are kept).
const MAX_POOLED: usize = 6;

thread_local! {
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A scratch buffer of f32 borrowed from the calling thread's pool; it returns there on drop.
#[derive(Debug)]
pub struct Scratch {
    buf: Vec<f32>,
}

impl Scratch {
    /// A buffer of exactly `len` values whose contents are unspecified (left over from earlier
    /// use, or zero): callers overwrite every value they read.
    pub fn uninit(len: usize) -> Self {
        let mut buf = POOL.with(|p| {
            let mut pool = p.borrow_mut();
            // Best fit: the smallest pooled buffer that is large enough, else the largest one
            // (which grows, keeping its mapped pages).
            let pick = pool
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i)
                .or_else(|| {
                    pool.iter()
                        .enumerate()
                        .max_by_key(|(_, b)| b.capacity())
                        .map(|(i, _)| i)
                });
            pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
        });
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0.0);
        }
        Self { buf }
    }

    /// A buffer of `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut s = Self::uninit(len);
        s.buf.fill(0.0);
        s
    }
}

impl Deref for Scratch {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.buf
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() == 0 {
            return;
        }
        // A thread being torn down has no pool any more; the buffer is then simply freed.
        let _ = POOL.try_with(|p| {
            let mut pool = p.borrow_mut();
            pool.push(buf);
            if pool.len() > MAX_POOLED
                && let Some((i, _)) = pool.iter().enumerate().min_by_key(|(_, b)| b.capacity())
            {
                pool.swap_remove(i);
            }
        });
    }
}

/// Bytes held by the calling thread's pool (for tests and diagnostics).
pub fn pooled_bytes() -> usize {
    POOL.with(|p| p.borrow().iter().map(|b| b.capacity() * 4).sum())
}

/// Makes glibc's allocator keep freed blocks up to 32 MiB (an activation of a CIFAR network at
/// batch 128 is 2 to 16 MiB) in its heaps instead of unmapping them, and keep up to 512 MiB of
/// free memory at the top of a heap: a training step then reuses the pages of the previous one
/// instead of page-faulting fresh zeroed memory (about a tenth of the step time otherwise, and
/// three times fewer page faults measured on ResNet-20). Runs once per process, the first time a
/// fast kernel is chosen (the harness also calls it first thing in `main`, so that every thread
/// shares one arena, see below); a no-op off glibc. The cost is a process that keeps its peak
/// heap.
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // glibc's <malloc.h> parameter numbers.
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            const M_ARENA_MAX: i32 = -8;
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            // SAFETY: `mallopt` is glibc's documented, thread-safe tuning entry point; it takes
            // two integers and touches no memory of ours. 32 MiB is glibc's largest accepted
            // mmap threshold on 64-bit targets; a refused value leaves the default in place.
            // One arena for every thread: a worker thread's own arena grows in 64 MiB heaps
            // that glibc maps and unmaps as activations come and go (a ResNet-20 step run from
            // a rayon worker lost half its speed to page faults); the main arena keeps them.
            // It applies to threads that have not allocated yet, hence the call at start-up.
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 512 << 20);
                mallopt(M_ARENA_MAX, 1);
            }
        }
    });
}

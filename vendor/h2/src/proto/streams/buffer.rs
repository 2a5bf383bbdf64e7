use slab::Slab;
use std::collections::VecDeque;

/// Buffers frames for multiple streams.
#[derive(Debug)]
pub struct Buffer<T> {
    slab: Slab<Slot<T>>,
}

/// A sequence of frames in a `Buffer`
#[derive(Debug)]
pub struct Deque {
    indices: Option<Indices>,
}

/// Tracks the head & tail for a sequence of frames in a `Buffer`.
#[derive(Debug, Default, Copy, Clone)]
struct Indices {
    head: usize,
    tail: usize,
}

#[derive(Debug)]
struct Slot<T> {
    value: T,
    next: Option<usize>,
}

impl<T> Buffer<T> {
    pub fn new() -> Self {
        Buffer { slab: Slab::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

impl Deque {
    pub fn new() -> Self {
        Deque { indices: None }
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_none()
    }

    pub fn push_back<T>(&mut self, buf: &mut Buffer<T>, value: T) {
        let key = buf.slab.insert(Slot { value, next: None });

        match self.indices {
            Some(ref mut idxs) => {
                buf.slab[idxs.tail].next = Some(key);
                idxs.tail = key;
            }
            None => {
                self.indices = Some(Indices {
                    head: key,
                    tail: key,
                });
            }
        }
    }

    pub fn push_front<T>(&mut self, buf: &mut Buffer<T>, value: T) {
        let key = buf.slab.insert(Slot { value, next: None });

        match self.indices {
            Some(ref mut idxs) => {
                buf.slab[key].next = Some(idxs.head);
                idxs.head = key;
            }
            None => {
                self.indices = Some(Indices {
                    head: key,
                    tail: key,
                });
            }
        }
    }

    pub fn pop_front<T>(&mut self, buf: &mut Buffer<T>) -> Option<T> {
        match self.indices {
            Some(mut idxs) => {
                let mut slot = buf.slab.remove(idxs.head);

                if idxs.head == idxs.tail {
                    assert!(slot.next.is_none());
                    self.indices = None;
                } else {
                    idxs.head = slot.next.take().unwrap();
                    self.indices = Some(idxs);
                }

                Some(slot.value)
            }
            None => None,
        }
    }
}

/// A stream's received frames, in a queue of its own (Sluice's patch, vendor/README.md).
///
/// Upstream threads every stream's received frames through one slab per connection. When a
/// connection holds thousands of unread frames (a gRPC server streaming small messages faster
/// than the proxy relays them), taking one out and putting the next in touch slots scattered
/// across megabytes, and nearly every access misses the cache: 45% of the relaying proxy's time
/// in `mesh_bench`'s server streams. Here each stream's frames are contiguous and read in order,
/// and `Event`'s large variants are boxed so a slot is under 64 bytes instead of about 250.
///
/// The methods keep the shared buffer as an (unused) argument so that the call sites read as
/// upstream's do.
#[derive(Debug)]
pub struct Ring<T>(VecDeque<T>);

/// A queue that drains with more room than this lets it go, so an idle stream does not keep
/// the memory of a past burst.
const RING_KEEP: usize = 64;

impl<T> Ring<T> {
    pub fn new() -> Self {
        Ring(VecDeque::new())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push_back(&mut self, _buf: &mut Buffer<T>, value: T) {
        self.0.push_back(value)
    }

    pub fn push_front(&mut self, _buf: &mut Buffer<T>, value: T) {
        self.0.push_front(value)
    }

    pub fn pop_front(&mut self, _buf: &mut Buffer<T>) -> Option<T> {
        let value = self.0.pop_front();
        if self.0.is_empty() && self.0.capacity() > RING_KEEP {
            self.0 = VecDeque::new();
        }
        value
    }
}

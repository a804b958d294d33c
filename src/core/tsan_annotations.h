// Happens-before edges ThreadSanitizer cannot see for itself: a buffer
// handed to a library that is not instrumented (libzmq) and given back on
// another thread. tsan_release(p) on the thread that filled the buffer,
// before the hand-over, and tsan_acquire(p) on the thread that gets it back
// make the second thread's later accesses ordered after the first's writes,
// which is what the library's own (unseen) synchronisation guarantees. Both
// compile to nothing without -fsanitize=thread.
#pragma once

#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace dtrain {

inline void tsan_release([[maybe_unused]] const void* address) {
#if defined(__SANITIZE_THREAD__)
  __tsan_release(const_cast<void*>(address));
#endif
}

inline void tsan_acquire([[maybe_unused]] const void* address) {
#if defined(__SANITIZE_THREAD__)
  __tsan_acquire(const_cast<void*>(address));
#endif
}

}  // namespace dtrain

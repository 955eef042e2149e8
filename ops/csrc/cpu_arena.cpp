// A caching allocator for large CPU buffers, open while an inference scope is (ops/arena.py).
//
// glibc serves every allocation above its mmap threshold with a fresh mapping and unmaps it when it is
// freed, so a detector's activation maps cost page faults (the kernel zeroes each new page) on every
// forward. While at least one scope is open (cpu_arena_enter/exit, counted, process-wide), allocations
// of at least kMinBytes are served from a cache of freed blocks (sizes rounded to a size class, less
// than 1/8 slack): the smallest cached block that fits, if it is at most kFitSlack larger (the most
// recently freed of that size), else a fresh mapping. A block goes back to the cache when it is freed,
// inside a scope or after. The cache follows what the calls need: the arena's footprint (blocks in use
// plus cached) never exceeds 3/2 of the most ever in use at once (or the request that sets a new peak), so
// when the input size changes the least recently freed blocks, those the new size left behind, are
// unmapped to make room; the cache is also capped by the limit (cpu_arena_set_limit). Blocks are the
// arena's own mappings (mmap / munmap), so what it releases leaves the resident set at once.
// Outside a scope every allocation goes to the allocator installed before, whose deleter frees it.
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <iterator>
#include <limits>
#include <list>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kMinBytes = size_t{1} << 18;  // 256 KiB: smaller buffers stay with glibc's heap
constexpr size_t kFitSlack = 4;                 // a cached block serves requests down to 1/(1 + 1/4) of it
constexpr size_t kHeadroom = 2;                 // the footprint may exceed the peak in use by 1/2 of it

// n rounded up to a multiple of 1/16 of the next power of two: 8 classes per doubling.
size_t size_class(size_t n) {
  size_t power = 1;
  while (power < n) power <<= 1;
  const size_t step = power / 16;
  return (n + step - 1) / step * step;
}

class Arena final : public c10::Allocator {
 public:
  explicit Arena(c10::Allocator* fallback) : fallback_(fallback), fallback_delete_(fallback->raw_deleter()) {}

  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes >= kMinBytes && depth_.load(std::memory_order_relaxed) > 0) {
      void* ptr = take(size_class(nbytes));
      return {ptr, ptr, &Arena::delete_block, c10::Device(c10::DeviceType::CPU)};
    }
    // The fallback's blocks carry its context == data (its raw_deleter is not null: see install()).
    c10::DataPtr data = fallback_->allocate(nbytes);
    void* ptr = data.get();
    TORCH_INTERNAL_ASSERT(ptr == data.get_context(), "cpu arena: the CPU allocator's context is not its data");
    const c10::Device device = data.device();
    data.release_context();
    return {ptr, ptr, &Arena::delete_block, device};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Arena::delete_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static Arena* instance() { return instance_.load(std::memory_order_acquire); }

  // Installs the arena in front of the current CPU allocator, once per process (later calls return the
  // first result); false where that is not possible.
  static bool install() {
    static const bool installed = [] {
      c10::Allocator* current = c10::GetCPUAllocator();
      if (current == nullptr || current->raw_deleter() == nullptr) return false;
      auto* arena = new Arena(current);  // lives as long as the process: tensors may still point to it
      c10::SetCPUAllocator(arena, /*priority=*/UINT8_MAX);
      if (c10::GetCPUAllocator() != arena) return false;  // another allocator outranks it: never used
      instance_.store(arena, std::memory_order_release);
      // A fork (a DataLoader worker) while another thread holds the lock would leave the child's copy
      // locked.
      pthread_atfork([] { instance()->mutex_.lock(); }, [] { instance()->mutex_.unlock(); },
                     [] { instance()->mutex_.unlock(); });
      return true;
    }();
    return installed;
  }

  void enter() { depth_.fetch_add(1); }
  void exit() {
    if (depth_.fetch_sub(1) <= 0) {
      depth_.fetch_add(1);
      TORCH_CHECK(false, "cpu_arena_exit: no scope is open (an exit without its enter)");
    }
  }

  int64_t release_cached() {
    std::vector<Cached> blocks;
    int64_t released = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      released = static_cast<int64_t>(cached_);
      blocks.assign(order_.begin(), order_.end());
      order_.clear();
      free_.clear();
      cached_ = 0;
    }
    unmap(blocks);
    return released;
  }

  void set_limit(size_t bytes) {
    std::vector<Cached> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = bytes;
      evict(kNoRoom, evicted);
    }
    unmap(evicted);
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {static_cast<int64_t>(in_use_), static_cast<int64_t>(cached_), static_cast<int64_t>(peak_),
            hits_, misses_, static_cast<int64_t>(limit_), depth_.load()};
  }

 private:
  struct Cached {
    void* ptr;
    size_t bytes;
  };
  using Order = std::list<Cached>;

  // A block of at least `bytes` (a size class): the best-fitting cached one within kFitSlack, else a
  // fresh mapping, for which the least recently freed cached blocks are unmapped first as far as the
  // footprint bound requires.
  void* take(size_t bytes) {
    void* ptr = nullptr;
    size_t size = bytes;
    std::vector<Cached> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto fit = free_.lower_bound(bytes);
      if (fit != free_.end() && fit->first <= bytes + bytes / kFitSlack) {
        fit = std::prev(free_.upper_bound(fit->first));  // the most recently freed block of that size
        ptr = fit->second->ptr;
        size = fit->first;
        order_.erase(fit->second);
        free_.erase(fit);
        cached_ -= size;
        ++hits_;
      } else {
        ++misses_;
        // The footprint stays within 3/2 of the peak in use, or the in-use bytes this request makes.
        const size_t bound = std::max(peak_ + peak_ / kHeadroom, in_use_ + bytes);
        evict(bound > in_use_ + bytes ? bound - in_use_ - bytes : 0, evicted);
      }
    }
    unmap(evicted);
    if (ptr == nullptr) ptr = map(bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    live_.emplace(ptr, size);
    live_count_.fetch_add(1, std::memory_order_release);
    in_use_ += size;
    peak_ = std::max(peak_, in_use_);
    return ptr;
  }

  void* map(size_t bytes) {
    void* ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) {
      release_cached();  // out of memory: give the cache back and try once more
      ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    TORCH_CHECK_WITH(OutOfMemoryError, ptr != MAP_FAILED, "cpu arena: out of memory mapping ", bytes, " bytes");
    return ptr;
  }

  static void unmap(const std::vector<Cached>& blocks) {
    for (const Cached& block : blocks) munmap(block.ptr, block.bytes);
  }

  static void delete_block(void* ptr) { instance()->give_back(ptr); }

  void give_back(void* ptr) {
    if (live_count_.load(std::memory_order_acquire) > 0) {
      bool owned = false;
      std::vector<Cached> evicted;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        auto block = live_.find(ptr);
        if (block != live_.end()) {
          owned = true;
          const size_t bytes = block->second;
          live_.erase(block);
          live_count_.fetch_sub(1, std::memory_order_release);
          in_use_ -= bytes;
          free_.emplace(bytes, order_.insert(order_.end(), Cached{ptr, bytes}));
          cached_ += bytes;
          evict(kNoRoom, evicted);
        }
      }
      if (owned) {
        unmap(evicted);
        return;
      }
    }
    fallback_delete_(ptr);
  }

  // Takes the least recently freed blocks out of the cache until it holds at most `room` bytes
  // (kNoRoom: no bound but the limit) and fits its limit (lock held); the caller unmaps them after
  // unlocking.
  static constexpr size_t kNoRoom = std::numeric_limits<size_t>::max();
  void evict(size_t room, std::vector<Cached>& evicted) {
    const size_t target = std::min(room, limit_);
    while (cached_ > target) {
      const Order::iterator oldest = order_.begin();
      auto [first, last] = free_.equal_range(oldest->bytes);
      free_.erase(std::find_if(first, last, [&](const auto& entry) { return entry.second == oldest; }));
      cached_ -= oldest->bytes;
      evicted.push_back(*oldest);
      order_.erase(oldest);
    }
  }

  static std::atomic<Arena*> instance_;
  c10::Allocator* fallback_;
  c10::DeleterFnPtr fallback_delete_;
  std::atomic<int64_t> depth_{0};
  std::atomic<int64_t> live_count_{0};
  std::mutex mutex_;
  Order order_;                                    // the cached blocks, least recently freed first
  std::multimap<size_t, Order::iterator> free_;  // the cached blocks by size, in the order freed
  std::unordered_map<void*, size_t> live_;
  size_t in_use_ = 0, cached_ = 0, peak_ = 0;
  size_t limit_ = size_t{4} << 30;
  int64_t hits_ = 0, misses_ = 0;
};

std::atomic<Arena*> Arena::instance_{nullptr};

bool cpu_arena_enter() {
  if (!Arena::install()) return false;
  Arena::instance()->enter();
  return true;
}

void cpu_arena_exit() {
  TORCH_CHECK(Arena::instance() != nullptr, "cpu_arena_exit: no scope is open (the arena was never entered)");
  Arena::instance()->exit();
}

int64_t cpu_arena_release() { return Arena::instance() ? Arena::instance()->release_cached() : 0; }

void cpu_arena_set_limit(int64_t bytes) {
  TORCH_CHECK(bytes >= 0, "cpu_arena_set_limit: the limit must be >= 0 bytes, got ", bytes);
  TORCH_CHECK(Arena::install(), "cpu_arena_set_limit: the arena could not be installed");
  Arena::instance()->set_limit(static_cast<size_t>(bytes));
}

std::vector<int64_t> cpu_arena_stats() {
  return Arena::instance() ? Arena::instance()->stats() : std::vector<int64_t>{0, 0, 0, 0, 0, 0, 0};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(deformbev_native, m) {
  m.def("cpu_arena_enter() -> bool", &cpu_arena_enter);
  m.def("cpu_arena_exit() -> ()", &cpu_arena_exit);
  m.def("cpu_arena_release() -> int", &cpu_arena_release);
  m.def("cpu_arena_set_limit(int bytes) -> ()", &cpu_arena_set_limit);
  m.def("cpu_arena_stats() -> int[]", &cpu_arena_stats);
}

// A timeline of a CUDA program without Nsight Systems (not on the GPU machine): loaded by the
// driver through CUDA_INJECTION64_PATH, it records every kernel, copy and memset with its GPU
// start and end, and every runtime and driver API call with its host start and end, through
// CUPTI's activity API, and writes them at exit to $TIMELINE_OUT as tab-separated lines:
//   kind  start_ns  end_ns  correlation_id  name
// kind is K (kernel), C (copy), S (memset), R (runtime call), D (driver call); a host wait shows
// as the runtime call that waited. bench/timeline/gaps.py reads it. Build: bench/timeline/build.sh.
#include <cupti.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

std::mutex g_mutex;
std::vector<std::string> g_lines;

void check(CUptiResult r, const char* what) {
  if (r == CUPTI_SUCCESS) return;
  const char* s = nullptr;
  cuptiGetResultString(r, &s);
  std::fprintf(stderr, "[timeline] %s: %s\n", what, s ? s : "?");
}

const char* api_name(CUpti_CallbackDomain domain, uint32_t cbid) {
  const char* name = nullptr;
  if (cuptiGetCallbackName(domain, cbid, &name) != CUPTI_SUCCESS || !name) return "?";
  return name;
}

void add(char kind, uint64_t start, uint64_t end, uint32_t corr, const char* name) {
  char head[96];
  std::snprintf(head, sizeof head, "%c\t%llu\t%llu\t%u\t", kind, (unsigned long long)start, (unsigned long long)end,
                corr);
  g_lines.push_back(std::string(head) + (name ? name : "?"));
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = 8u << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::lock_guard<std::mutex> lock(g_mutex);
  CUpti_Activity* rec = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    switch (rec->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
      case CUPTI_ACTIVITY_KIND_KERNEL: {
        auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(rec);
        add('K', k->start, k->end, k->correlationId, k->name);
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        auto* m = reinterpret_cast<CUpti_ActivityMemcpy6*>(rec);
        char name[64];
        std::snprintf(name, sizeof name, "copy kind %u, %llu bytes", unsigned(m->copyKind),
                      (unsigned long long)m->bytes);
        add('C', m->start, m->end, m->correlationId, name);
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        auto* m = reinterpret_cast<CUpti_ActivityMemset4*>(rec);
        add('S', m->start, m->end, m->correlationId, "memset");
        break;
      }
      case CUPTI_ACTIVITY_KIND_RUNTIME:
      case CUPTI_ACTIVITY_KIND_DRIVER: {
        auto* a = reinterpret_cast<CUpti_ActivityAPI*>(rec);
        const bool rt = rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME;
        add(rt ? 'R' : 'D', a->start, a->end, a->correlationId,
            api_name(rt ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API, a->cbid));
        break;
      }
      default:
        break;
    }
  }
  std::free(buffer);
}

void write_out() {
  check(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "flush");
  const char* path = std::getenv("TIMELINE_OUT");
  FILE* f = std::fopen(path && *path ? path : "timeline.tsv", "w");
  if (!f) {
    std::perror("[timeline] open");
    return;
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  for (const std::string& l : g_lines) std::fprintf(f, "%s\n", l.c_str());
  std::fclose(f);
  std::fprintf(stderr, "[timeline] %zu records\n", g_lines.size());
}

}  // namespace

extern "C" int InitializeInjection(void) {
  check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "callbacks");
  for (CUpti_ActivityKind k : {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                               CUPTI_ACTIVITY_KIND_MEMSET, CUPTI_ACTIVITY_KIND_RUNTIME, CUPTI_ACTIVITY_KIND_DRIVER})
    check(cuptiActivityEnable(k), "enable");
  std::atexit(write_out);
  return 1;
}

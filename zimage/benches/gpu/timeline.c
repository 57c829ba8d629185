// A GPU timeline of any CUDA program, for machines without Nsight Systems: a CUDA injection
// library that records, through CUPTI's activity API, every kernel, copy and memset the GPU
// ran and every CUDA driver and runtime call the host made, with their start and end, and
// writes them as CSV when the program exits, with the unified-memory migrations and GPU page
// faults of CUDA managed memory. `timeline.py` reads it.
//
//   gcc -O2 -shared -fPIC -I$CUPTI/include -I$CUDA_HOME/include timeline.c
//       -L$CUPTI/lib -l:libcupti.so.13 -o libtimeline.so
//   CUDA_INJECTION64_PATH=$PWD/libtimeline.so TIMELINE_OUT=/tmp/timeline.csv
//       LD_LIBRARY_PATH=$CUPTI/lib $BIN/dit generate ...
//
// CUPTI is the `nvidia-cuda-cupti` wheel's (PyTorch ships it) or the toolkit's
// extras/CUPTI. Rows: kind (K kernel, C copy, S memset, D driver call, R runtime call,
// U unified-memory counter), start and end in ns on CUPTI's clock, stream (kernels, copies,
// memsets, counters) or host thread (calls), correlation id (a call and the work it
// launched share it; 0 for counters), name (a counter's: "um KIND VALUE"). Records are
// read through the oldest layouts that hold these fields (kernels: CUpti_ActivityKernel4),
// which later versions extend at their end: in CUPTI 13.5's headers the fields read here
// sit at the same offsets in CUpti_ActivityKernel13, CUpti_ActivityMemcpy7,
// CUpti_ActivityMemset5 and CUpti_ActivityUnifiedMemoryCounter3.

#include <cupti.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static FILE* out;

#define CHECK(call)                                                            \
  do {                                                                         \
    CUptiResult status = (call);                                               \
    if (status != CUPTI_SUCCESS) {                                             \
      const char* what = "?";                                                  \
      cuptiGetResultString(status, &what);                                     \
      fprintf(stderr, "timeline: %s: %s\n", #call, what);                      \
      return 0;                                                                \
    }                                                                          \
  } while (0)

enum { BUFFER_BYTES = 8 << 20 };

static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = BUFFER_BYTES;
  *buffer = aligned_alloc(ACTIVITY_RECORD_ALIGNMENT, BUFFER_BYTES);
  *max_records = 0;
}

static void write_call(char kind, CUpti_CallbackDomain domain, const CUpti_ActivityAPI* api) {
  const char* name = "?";
  cuptiGetCallbackName(domain, api->cbid, &name);
  fprintf(out, "%c,%llu,%llu,%u,%u,%s\n", kind, (unsigned long long)api->start,
          (unsigned long long)api->end, api->threadId, api->correlationId, name);
}

static void write_record(const CUpti_Activity* record) {
  switch (record->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
    case CUPTI_ACTIVITY_KIND_KERNEL: {
      const CUpti_ActivityKernel4* k = (const CUpti_ActivityKernel4*)record;
      // Kernel names are C++ signatures: their commas would split the CSV row.
      fprintf(out, "K,%llu,%llu,%u,%u,\"%s\"\n", (unsigned long long)k->start,
              (unsigned long long)k->end, k->streamId, k->correlationId, k->name);
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
      const CUpti_ActivityMemcpy* c = (const CUpti_ActivityMemcpy*)record;
      fprintf(out, "C,%llu,%llu,%u,%u,memcpy kind %u %llu bytes\n", (unsigned long long)c->start,
              (unsigned long long)c->end, c->streamId, c->correlationId, c->copyKind,
              (unsigned long long)c->bytes);
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
      const CUpti_ActivityMemset* s = (const CUpti_ActivityMemset*)record;
      fprintf(out, "S,%llu,%llu,%u,%u,memset %llu bytes\n", (unsigned long long)s->start,
              (unsigned long long)s->end, s->streamId, s->correlationId,
              (unsigned long long)s->bytes);
      break;
    }
    case CUPTI_ACTIVITY_KIND_UNIFIED_MEMORY_COUNTER: {
      const CUpti_ActivityUnifiedMemoryCounter2* u =
          (const CUpti_ActivityUnifiedMemoryCounter2*)record;
      static const char* kinds[] = {"unknown", "htod_bytes", "dtoh_bytes", "cpu_faults",
                                    "gpu_faults", "thrashing", "throttling", "remote_map",
                                    "dtod_bytes"};
      unsigned kind = u->counterKind < 9 ? u->counterKind : 0;
      fprintf(out, "U,%llu,%llu,%u,0,um %s %llu\n", (unsigned long long)u->start,
              (unsigned long long)u->end, u->streamId, kinds[kind],
              (unsigned long long)u->value);
      break;
    }
    case CUPTI_ACTIVITY_KIND_DRIVER:
      write_call('D', CUPTI_CB_DOMAIN_DRIVER_API, (const CUpti_ActivityAPI*)record);
      break;
    case CUPTI_ACTIVITY_KIND_RUNTIME:
      write_call('R', CUPTI_CB_DOMAIN_RUNTIME_API, (const CUpti_ActivityAPI*)record);
      break;
    default:
      break;
  }
}

static void CUPTIAPI buffer_completed(
    CUcontext context, uint32_t stream, uint8_t* buffer, size_t size, size_t valid) {
  (void)context;
  (void)stream;
  (void)size;
  CUpti_Activity* record = NULL;
  // Records CUPTI hands over after `finish` (a context torn down later) have nowhere to go.
  while (out && cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    write_record(record);
  }
  size_t dropped = 0;
  if (cuptiActivityGetNumDroppedRecords(context, stream, &dropped) == CUPTI_SUCCESS &&
      dropped > 0) {
    fprintf(stderr, "timeline: %zu records dropped\n", dropped);
  }
  free(buffer);
}

static void finish(void) {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  if (out) {
    fclose(out);
    out = NULL;
  }
}

// Migrations and faults of managed memory; a machine or driver without them only loses
// these rows.
static void enable_unified_memory_counters(void) {
  CUpti_ActivityUnifiedMemoryCounterKind kinds[] = {
      CUPTI_ACTIVITY_UNIFIED_MEMORY_COUNTER_KIND_BYTES_TRANSFER_HTOD,
      CUPTI_ACTIVITY_UNIFIED_MEMORY_COUNTER_KIND_BYTES_TRANSFER_DTOH,
      CUPTI_ACTIVITY_UNIFIED_MEMORY_COUNTER_KIND_GPU_PAGE_FAULT};
  enum { N = sizeof kinds / sizeof kinds[0] };
  CUpti_ActivityUnifiedMemoryCounterConfig config[N];
  for (int i = 0; i < N; ++i) {
    config[i].scope = CUPTI_ACTIVITY_UNIFIED_MEMORY_COUNTER_SCOPE_PROCESS_SINGLE_DEVICE;
    config[i].kind = kinds[i];
    config[i].deviceId = 0;
    config[i].enable = 1;
  }
  CUptiResult status = cuptiActivityConfigureUnifiedMemoryCounter(config, N);
  if (status == CUPTI_SUCCESS) {
    status = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_UNIFIED_MEMORY_COUNTER);
  }
  if (status != CUPTI_SUCCESS) {
    const char* what = "?";
    cuptiGetResultString(status, &what);
    fprintf(stderr, "timeline: no unified-memory counters: %s\n", what);
  }
}

// Called by the CUDA driver when it initializes, for the library CUDA_INJECTION64_PATH names;
// 1 on success.
int InitializeInjection(void) {
  const char* path = getenv("TIMELINE_OUT");
  out = fopen(path ? path : "timeline.csv", "w");
  if (!out) {
    perror("timeline: TIMELINE_OUT");
    return 0;
  }
  fprintf(out, "kind,start,end,stream,correlation,name\n");
  CHECK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER));
  CHECK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME));
  enable_unified_memory_counters();
  atexit(finish);
  return 1;
}

/*
 * litert_c.h: the part of LiteRT's C API (the CompiledModel API) that edgekit uses.
 *
 * The ai-edge-litert wheel ships libLiteRt.so, which exports LiteRT's C API under the symbol
 * version VERS_1.0, but no headers. These declarations are written from LiteRT's public
 * headers (github.com/google-ai-edge/LiteRT, `litert/c/`) at the commit that bumped the SDK to
 * 2.3.0, the ABI of the wheel edgekit pins:
 *
 *   litert_common.h, litert_environment.h, litert_model.h, litert_model_types.h,
 *   litert_layout.h, litert_op_code.h, litert_options.h, litert_opaque_options.h,
 *   litert_compiled_model.h, litert_tensor_buffer.h, litert_tensor_buffer_types.h
 *
 * Only what edgekit calls is declared, and every function here is checked against the
 * symbols the pinned wheel exports (`make native-symbols`, run by the tests and CI). Three
 * functions of those headers are NOT exported by the wheel and must not be used:
 * LiteRtGetStatusString (edgekit writes its own messages), LrtCreateCpuOptions and its setters
 * (threads are set through an opaque "xnnpack" option instead, see edgekit.c).
 *
 * The structs below are passed by value or filled by LiteRT, so their layout is part of the
 * ABI: the _Static_asserts pin the sizes and offsets the LiteRT headers assert for 64-bit
 * targets (LP64: x86-64, arm64).
 */
#ifndef EDGEKIT_LITERT_C_H_
#define EDGEKIT_LITERT_C_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- litert_common.h ---------------------------------------------------------------------- */

typedef struct LiteRtEnvironmentT *LiteRtEnvironment;
typedef struct LiteRtModelT *LiteRtModel;
typedef struct LiteRtSignatureT *LiteRtSignature;
typedef struct LiteRtTensorT *LiteRtTensor;
typedef struct LiteRtOpT *LiteRtOp;
typedef struct LiteRtSubgraphT *LiteRtSubgraph;
typedef struct LiteRtWeightsT *LiteRtWeights;
typedef struct LiteRtOptionsT *LiteRtOptions;
typedef struct LiteRtOpaqueOptionsT *LiteRtOpaqueOptions;
typedef struct LiteRtCompiledModelT *LiteRtCompiledModel;
typedef struct LiteRtTensorBufferT *LiteRtTensorBuffer;

/* LiteRtStatus is a C enum (int-sized); only the values edgekit names are listed. */
typedef int LiteRtStatus;
enum {
  kLiteRtStatusOk = 0,
  kLiteRtStatusErrorInvalidArgument = 1,
  kLiteRtStatusErrorMemoryAllocationFailure = 2,
  kLiteRtStatusErrorRuntimeFailure = 3,
  kLiteRtStatusErrorMissingInputTensor = 4,
  kLiteRtStatusErrorUnsupported = 5,
  kLiteRtStatusErrorNotFound = 6,
  kLiteRtStatusErrorFileIO = 500,
  kLiteRtStatusErrorInvalidFlatbuffer = 501,
  kLiteRtStatusErrorCompilation = 504,
};

typedef int LiteRtHwAcceleratorSet;
enum { kLiteRtHwAcceleratorCpu = 1 << 0 };

typedef size_t LiteRtParamIndex;

/* ---- litert_layout.h / litert_model_types.h ------------------------------------------------ */

#define LITERT_TENSOR_MAX_RANK 8

typedef struct {
  unsigned int rank : 7;
  unsigned int has_strides : 1;
  int32_t dimensions[LITERT_TENSOR_MAX_RANK]; /* < 0: dynamic */
  uint32_t strides[LITERT_TENSOR_MAX_RANK];
} LiteRtLayout;

/* LiteRtElementType: the TfLiteType numbers. */
typedef enum {
  kLiteRtElementTypeNone = 0,
  kLiteRtElementTypeFloat32 = 1,
  kLiteRtElementTypeInt32 = 2,
  kLiteRtElementTypeInt64 = 4,
  kLiteRtElementTypeInt8 = 9,
  kLiteRtElementTypeFloat16 = 10,
} LiteRtElementType;

typedef struct {
  LiteRtElementType element_type;
  LiteRtLayout layout;
} LiteRtRankedTensorType;

typedef enum {
  kLiteRtRankedTensorType = 0,
  kLiteRtUnrankedTensorType = 1,
} LiteRtTensorTypeId;

typedef enum {
  kLiteRtQuantizationNone = 0,
  kLiteRtQuantizationPerTensor = 1,
  kLiteRtQuantizationPerChannel = 2,
  kLiteRtQuantizationBlockWise = 3,
} LiteRtQuantizationTypeId;

typedef struct {
  float scale;
  int64_t zero_point;
} LiteRtQuantizationPerTensor;

typedef struct LiteRtTensorDefiningOp {
  LiteRtOp op;
  LiteRtParamIndex op_output_index;
} LiteRtTensorDefiningOp;

/* LiteRtOpCode: the TfLiteBuiltinOperator numbers (litert_op_code.h). */
typedef enum {
  kLiteRtOpCodeTflReshape = 22,
  kLiteRtOpCodeTflSoftmax = 25,
  kLiteRtOpCodeTflRandomUniform = 148,
} LiteRtOpCode;

/* litert_any.h / litert_environment_options.h: the environment options edgekit sets. */
typedef enum {
  kLiteRtAnyTypeNone = 0,
  kLiteRtAnyTypeBool = 1,
  kLiteRtAnyTypeInt = 2,
} LiteRtAnyType;

typedef struct {
  LiteRtAnyType type;
  union {
    bool bool_value;
    int64_t int_value;
    double real_value;
    const char *str_value;
    const void *ptr_value;
  } value; /* anonymous in LiteRT's header; named here, same layout */
} LiteRtAny;

typedef enum {
  /* Bitmask of accelerators registered when the environment is created (default: all, which
   * tries to dlopen the GPU and NPU accelerator libraries). */
  kLiteRtEnvOptionTagAutoRegisterAccelerators = 24,
  /* Minimum severity of LiteRT's default logger. That logger is process-wide in LiteRT. */
  kLiteRtEnvOptionTagMinLoggerSeverity = 25,
} LiteRtEnvOptionTag;

typedef struct {
  LiteRtEnvOptionTag tag;
  LiteRtAny value;
} LiteRtEnvOption;

/* litert_logging.h: LiteRtLogSeverity. */
enum {
  kLiteRtLogSeverityInfo = 1,
  kLiteRtLogSeverityWarning = 2,
  kLiteRtLogSeverityError = 3,
  kLiteRtLogSeveritySilent = 4,
};

typedef void (*LiteRtHostMemoryDeallocator)(void *addr);
#define LITERT_HOST_MEMORY_BUFFER_ALIGNMENT 64

#if defined(__SIZEOF_POINTER__) && __SIZEOF_POINTER__ == 8
_Static_assert(sizeof(LiteRtLayout) == 68, "LiteRtLayout size mismatch");
_Static_assert(offsetof(LiteRtLayout, dimensions) == 4, "LiteRtLayout dimensions offset mismatch");
_Static_assert(offsetof(LiteRtLayout, strides) == 36, "LiteRtLayout strides offset mismatch");
_Static_assert(sizeof(LiteRtRankedTensorType) == 72, "LiteRtRankedTensorType size mismatch");
_Static_assert(offsetof(LiteRtRankedTensorType, layout) == 4, "LiteRtRankedTensorType layout offset mismatch");
_Static_assert(sizeof(LiteRtQuantizationPerTensor) == 16, "LiteRtQuantizationPerTensor size mismatch");
_Static_assert(offsetof(LiteRtQuantizationPerTensor, zero_point) == 8, "zero_point offset mismatch");
_Static_assert(sizeof(LiteRtTensorDefiningOp) == 16, "LiteRtTensorDefiningOp size mismatch");
_Static_assert(sizeof(LiteRtAny) == 16, "LiteRtAny size mismatch");
_Static_assert(sizeof(LiteRtEnvOption) == 24, "LiteRtEnvOption size mismatch");
_Static_assert(offsetof(LiteRtEnvOption, value) == 8, "LiteRtEnvOption value offset mismatch");
#endif
/* Enums cross the ABI through pointers (LiteRtElementType inside a struct, LiteRtOpCode* and
 * LiteRtTensorTypeId* out-parameters): they must be int-sized, as in LiteRT's C++ build. */
_Static_assert(sizeof(LiteRtElementType) == 4, "enum size mismatch");
_Static_assert(sizeof(LiteRtOpCode) == 4, "enum size mismatch");
_Static_assert(sizeof(LiteRtTensorTypeId) == 4, "enum size mismatch");
_Static_assert(sizeof(LiteRtQuantizationTypeId) == 4, "enum size mismatch");
_Static_assert(sizeof(LiteRtEnvOptionTag) == 4, "enum size mismatch");
_Static_assert(sizeof(LiteRtAnyType) == 4, "enum size mismatch");

/* ---- litert_environment.h ------------------------------------------------------------------ */

LiteRtStatus LiteRtCreateEnvironment(int num_options, const LiteRtEnvOption *options,
                                     LiteRtEnvironment *environment);
void LiteRtDestroyEnvironment(LiteRtEnvironment environment);

/* ---- litert_model.h ------------------------------------------------------------------------ */

/* The buffer must stay valid for the lifetime of the model. */
LiteRtStatus LiteRtCreateModelFromBuffer(LiteRtEnvironment environment, const void *buffer_addr,
                                         size_t buffer_size, LiteRtModel *model);
void LiteRtDestroyModel(LiteRtModel model);
LiteRtStatus LiteRtGetNumModelSignatures(LiteRtModel model, LiteRtParamIndex *num_signatures);
LiteRtStatus LiteRtGetModelSignature(LiteRtModel model, LiteRtParamIndex signature_index,
                                     LiteRtSignature *signature);
LiteRtStatus LiteRtGetSignatureKey(LiteRtSignature signature, const char **signature_key);
LiteRtStatus LiteRtGetNumSignatureInputs(LiteRtSignature signature, LiteRtParamIndex *num_inputs);
LiteRtStatus LiteRtGetSignatureInputName(LiteRtSignature signature, LiteRtParamIndex input_idx,
                                         const char **input_name);
LiteRtStatus LiteRtGetSignatureInputTensorByIndex(LiteRtSignature signature, LiteRtParamIndex input_idx,
                                                  LiteRtTensor *tensor);
LiteRtStatus LiteRtGetNumSignatureOutputs(LiteRtSignature signature, LiteRtParamIndex *num_outputs);
LiteRtStatus LiteRtGetSignatureOutputName(LiteRtSignature signature, LiteRtParamIndex output_idx,
                                          const char **output_name);
LiteRtStatus LiteRtGetSignatureOutputTensorByIndex(LiteRtSignature signature, LiteRtParamIndex output_idx,
                                                   LiteRtTensor *tensor);
LiteRtStatus LiteRtGetTensorTypeId(LiteRtTensor tensor, LiteRtTensorTypeId *type_id);
LiteRtStatus LiteRtGetRankedTensorType(LiteRtTensor tensor, LiteRtRankedTensorType *ranked_tensor_type);
LiteRtStatus LiteRtGetQuantizationTypeId(LiteRtTensor tensor, LiteRtQuantizationTypeId *q_type_id);
LiteRtStatus LiteRtGetPerTensorQuantization(LiteRtTensor tensor,
                                            LiteRtQuantizationPerTensor *per_tensor_quantization);
LiteRtStatus LiteRtGetTensorDefiningOp(LiteRtTensor tensor, bool *has_defining_op,
                                       LiteRtTensorDefiningOp *defining_op);
LiteRtStatus LiteRtGetTensorWeights(LiteRtTensor tensor, LiteRtWeights *weights);
LiteRtStatus LiteRtGetWeightsBytes(LiteRtWeights weights, const void **addr, size_t *size);
LiteRtStatus LiteRtGetSignatureSubgraph(LiteRtSignature signature, LiteRtSubgraph *subgraph);
LiteRtStatus LiteRtGetNumSubgraphOps(LiteRtSubgraph subgraph, LiteRtParamIndex *num_ops);
LiteRtStatus LiteRtGetSubgraphOp(LiteRtSubgraph subgraph, LiteRtParamIndex op_index, LiteRtOp *op);
LiteRtStatus LiteRtGetNumOpOutputs(LiteRtOp op, LiteRtParamIndex *num_outputs);
LiteRtStatus LiteRtGetOpOutput(LiteRtOp op, LiteRtParamIndex output_index, LiteRtTensor *output);
LiteRtStatus LiteRtGetOpCode(LiteRtOp op, LiteRtOpCode *code);
LiteRtStatus LiteRtGetNumOpInputs(LiteRtOp op, LiteRtParamIndex *num_inputs);
LiteRtStatus LiteRtGetOpInput(LiteRtOp op, LiteRtParamIndex input_index, LiteRtTensor *input);

/* ---- litert_options.h / litert_opaque_options.h -------------------------------------------- */

LiteRtStatus LiteRtCreateOptions(LiteRtOptions *options);
void LiteRtDestroyOptions(LiteRtOptions options);
LiteRtStatus LiteRtSetOptionsHardwareAccelerators(LiteRtOptions options,
                                                  LiteRtHwAcceleratorSet hardware_accelerators);
/* Ownership of `opaque_options` passes to `options`. */
LiteRtStatus LiteRtAddOpaqueOptions(LiteRtOptions options, LiteRtOpaqueOptions opaque_options);
LiteRtStatus LiteRtCreateOpaqueOptions(const char *payload_identifier, void *payload_data,
                                       void (*payload_destructor)(void *payload_data),
                                       LiteRtOpaqueOptions *options);
void LiteRtDestroyOpaqueOptions(LiteRtOpaqueOptions options);

/* ---- litert_compiled_model.h --------------------------------------------------------------- */

/* `compilation_options` stays owned by the caller. */
LiteRtStatus LiteRtCreateCompiledModel(LiteRtEnvironment environment, LiteRtModel model,
                                       LiteRtOptions compilation_options, LiteRtCompiledModel *compiled_model);
void LiteRtDestroyCompiledModel(LiteRtCompiledModel compiled_model);
LiteRtStatus LiteRtCompiledModelResizeInputTensor(LiteRtCompiledModel compiled_model,
                                                  LiteRtParamIndex signature_index, LiteRtParamIndex input_index,
                                                  const int *dims, size_t dims_size);
LiteRtStatus LiteRtGetCompiledModelOutputTensorLayouts(LiteRtCompiledModel compiled_model,
                                                       LiteRtParamIndex signature_index, size_t num_layouts,
                                                       LiteRtLayout *layouts, bool update_allocation);
LiteRtStatus LiteRtRunCompiledModel(LiteRtCompiledModel compiled_model, LiteRtParamIndex signature_index,
                                    size_t num_input_buffers, LiteRtTensorBuffer *input_buffers,
                                    size_t num_output_buffers, LiteRtTensorBuffer *output_buffers);

/* ---- litert_tensor_buffer.h ---------------------------------------------------------------- */

/* `host_buffer_addr` must be LITERT_HOST_MEMORY_BUFFER_ALIGNMENT-aligned; with a NULL
 * deallocator the memory stays the caller's. */
LiteRtStatus LiteRtCreateTensorBufferFromHostMemory(const LiteRtRankedTensorType *tensor_type,
                                                    void *host_buffer_addr, size_t host_buffer_size,
                                                    LiteRtHostMemoryDeallocator deallocator,
                                                    LiteRtTensorBuffer *buffer);
void LiteRtDestroyTensorBuffer(LiteRtTensorBuffer buffer);

#endif /* EDGEKIT_LITERT_C_H_ */

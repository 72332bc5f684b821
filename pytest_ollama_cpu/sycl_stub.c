/* No-op SYCL backend for the Ollama shipped in bigdl-core-cpp (the version embedded.py pins).
 * The real libollama-ggml-sycl.so aborts without an Intel GPU; these are the
 * symbols the other libraries import, answering "no SYCL devices". */
#include <stddef.h>
void *ggml_backend_sycl_reg(void) { return NULL; }
void *ggml_backend_sycl_init(int device) { (void)device; return NULL; }
int ggml_backend_sycl_get_device_count(void) { return 0; }
const char *ggml_backend_sycl_get_device_name(int device) { (void)device; return "none"; }
void _Z26ggml_format_convert_to_xpuPKvPvmi(const void *src, void *dst, unsigned long n, int type) { (void)src; (void)dst; (void)n; (void)type; }

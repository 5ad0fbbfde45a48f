// A small HIP matmul checked against the CPU: proves kernels for this GPU load and compute correctly.
#include <hip/hip_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#define CHECK(call)                                                              \
  do {                                                                           \
    hipError_t err = (call);                                                     \
    if (err != hipSuccess) {                                                     \
      std::fprintf(stderr, "%s: %s\n", #call, hipGetErrorString(err));           \
      return 1;                                                                  \
    }                                                                            \
  } while (0)

__global__ void matmul(const float* a, const float* b, float* c, int n) {
  int row = blockIdx.y * blockDim.y + threadIdx.y;
  int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (row < n && col < n) {
    float sum = 0.0f;
    for (int k = 0; k < n; ++k) sum += a[row * n + k] * b[k * n + col];
    c[row * n + col] = sum;
  }
}

int main() {
  const int n = 256;
  std::vector<float> a(n * n), b(n * n), c(n * n), ref(n * n, 0.0f);
  for (int i = 0; i < n * n; ++i) {
    a[i] = static_cast<float>(i % 7) / 7.0f;
    b[i] = static_cast<float>(i % 5) / 5.0f;
  }
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < n; ++k)
      for (int j = 0; j < n; ++j) ref[i * n + j] += a[i * n + k] * b[k * n + j];

  hipDeviceProp_t prop;
  CHECK(hipGetDeviceProperties(&prop, 0));
  std::printf("device 0: %s (%s)\n", prop.name, prop.gcnArchName);

  float *da, *db, *dc;
  const size_t bytes = sizeof(float) * n * n;
  CHECK(hipMalloc(&da, bytes));
  CHECK(hipMalloc(&db, bytes));
  CHECK(hipMalloc(&dc, bytes));
  CHECK(hipMemcpy(da, a.data(), bytes, hipMemcpyHostToDevice));
  CHECK(hipMemcpy(db, b.data(), bytes, hipMemcpyHostToDevice));
  dim3 block(16, 16), grid((n + 15) / 16, (n + 15) / 16);
  hipLaunchKernelGGL(matmul, grid, block, 0, 0, da, db, dc, n);
  CHECK(hipGetLastError());
  CHECK(hipMemcpy(c.data(), dc, bytes, hipMemcpyDeviceToHost));
  CHECK(hipFree(da));
  CHECK(hipFree(db));
  CHECK(hipFree(dc));

  double worst = 0.0;
  for (int i = 0; i < n * n; ++i) worst = std::fmax(worst, std::fabs(c[i] - ref[i]));
  std::printf("largest difference from the CPU: %g\n", worst);
  return worst < 1e-2 ? 0 : 1;
}

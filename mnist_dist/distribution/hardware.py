"""What this machine's processor is, and whether it computes bfloat16 natively.

bfloat16 halves the bytes of every activation, but only a processor with
bfloat16 arithmetic turns that into speed: on a CPU without it bfloat16 is
emulated, converted to and from float32 around the arithmetic, and fast.py
took 2.4 times as long to reach 99% in mixed_bfloat16 as in float32
(docs/performance.md).
`train.precision=mixed_bfloat16_if_native` asks `native_bfloat16` first.
"""

import platform

import tensorflow as tf

# x86 CPU features that multiply bfloat16 natively: AVX512_BF16 in vector
# registers, AMX in tiles (several times the float32 rate). /proc/cpuinfo
# names them so.
CPU_BF16_FEATURES = ('avx512_bf16', 'amx_bf16')
# NVIDIA's bfloat16 tensor cores: Ampere (compute capability 8.0) and later.
GPU_BF16_CAPABILITY = (8, 0)


def cpu() -> tuple[str, list[str]]:
  """(model name, the CPU_BF16_FEATURES it has), from /proc/cpuinfo on
  Linux; elsewhere the platform's name and none."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = f.read().splitlines()
  except OSError:
    return platform.processor() or platform.machine(), []
  fields = dict(line.split(':', 1) for line in lines if ':' in line)
  fields = {key.strip(): value.strip() for key, value in fields.items()}
  features = fields.get('flags', '').split()
  return (fields.get('model name', platform.machine()),
          [name for name in CPU_BF16_FEATURES if name in features])


def native_bfloat16(device_kind: str) -> bool:
  """Whether the devices of device_kind ('CPU', 'GPU', 'TPU') multiply
  bfloat16 natively: always on a TPU; on a GPU of compute capability 8.0 or
  more; on a CPU with AVX512_BF16 or AMX."""
  if device_kind == 'TPU':
    return True
  if device_kind == 'GPU':
    gpus = tf.config.list_physical_devices('GPU')
    return bool(gpus) and tuple(tf.config.experimental.get_device_details(
        gpus[0]).get('compute_capability', (0, 0))) >= GPU_BF16_CAPABILITY
  return bool(cpu()[1])

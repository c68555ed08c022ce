// Empty translation unit: its only job is to own the precompiled LibTorch headers.

"""Compressing an encoder's weights with the quantizer core: the method, its format, distillation."""

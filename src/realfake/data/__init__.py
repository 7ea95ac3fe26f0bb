"""Data: reading and decoding CIFAKE, sampling and splitting, degradations, DCGAN image storage."""

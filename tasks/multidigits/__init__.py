"""MultiMNIST-style task family (Sener & Koltun 2018) on real handwritten digits: two overlapping
digits per canvas, each digit's class, and a per-pixel map of which digit owns each stroke."""

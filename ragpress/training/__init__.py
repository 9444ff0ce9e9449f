"""Training of the learned heads (EXIT's sentence classifier, the CPRS critic, the ARC encoder).

Arrows point down: training imports the compressors whose weights it writes; compressors never
import training (they only read the shipped weight files)."""

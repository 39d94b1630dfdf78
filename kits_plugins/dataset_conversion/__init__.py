"""KiTS23 -> nnU-Net raw Dataset220 and the derived stage datasets 221/222/223."""

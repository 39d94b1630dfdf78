"""KiTS23 evaluation: HEC Dice and Surface Dice exactly as the challenge computes them."""

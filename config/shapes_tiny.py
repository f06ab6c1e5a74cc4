# The demo's ViT-Tiny stand-in (Table B's B1, B2; add after config/shapes.py): half the width of
# config/shapes.py's image tower, as ViT-Ti/16 is half of ViT-S/16 (192 vs 384 wide, same depth,
# heads of one width: 3 vs 6 of them; here 1 vs 2 of 32 dims); the same text tower, as the seed's
# b1/b2 keep a5's.
image_kwargs = {'patch_size': 8, 'embed_dim': 32, 'depth': 2, 'num_heads': 1}

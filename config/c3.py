# C3 — the A5 student (ViT-S/16, full method) with a pretrained text tower: MiniLM-L6-H384
# (nreimers/MiniLM-L6-H384-uncased, Wang et al., arXiv 2002.10957: 6 layers, 384 wide, the seed
# text tower's shape) with its own uncased WordPiece tokenizer, mean-pooled, projected to the
# teacher's dim. Runnable as written where the weights can be downloaded: train.py fetches them
# at its start (AutoModel / AutoTokenizer), the save keeps the tokenizer in out/c3/text_encoder.
# The cache needs no re-caching for the new tokenizer: it keeps the caption strings (a cache
# made before it did is refused with the command that re-caches it).
# 1 GPU: python train.py config/c3.py   (cost ~A5: the same tower shape, a 30,522-row table)
# eval: python eval.py --cache=cache/coco-L/test --ckpt=out/c3
exec(open('config/a5.py').read())
out_dir = 'out/c3'
text_init = 'nreimers/MiniLM-L6-H384-uncased'

# C3 in miniature: the demo student (config/shapes.py, A5 losses) with a pretrained text tower,
# the stand-in for MiniLM: a BERT of config/shapes.py's text-tower shape (64 wide, 1 layer),
# pretrained by masked-language modelling on the web split's captions, with its own word-level
# tokenizer. Make it once (~3 min on 1 CPU thread), then train (as a5 on the demo, ~the same cost):
#   python data/shapes/pretrain_text.py        # -> data/shapes/bert
#   python train.py config/shapes_c3.py
exec(open('config/c3.py').read())
exec(open('config/shapes.py').read())
out_dir = 'out/shapes/c3'
text_init = 'data/shapes/bert'

# Table C in miniature, C1: a ResNet student of the demo teacher, full method (A5 losses), beside
# the ViT student of config/shapes.py (a5) at the same image-tower size: timm's resnet18 layout
# (BasicBlocks 2-2-2-2) at 1/10.7 of its widths, 0.11M image params (the ViT's: 0.11M).
#   python train.py config/shapes_c1.py      (FULL=1 bash demo.sh runs it)
exec(open('config/c1.py').read())
exec(open('config/shapes.py').read())
out_dir = 'out/shapes/c1'
image_model = 'resnet18'
image_kwargs = {'channels': (6, 12, 24, 48), 'stem_width': 8}

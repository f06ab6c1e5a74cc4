# The TinySigLIP recipe on the synthetic world: the demo twin of
# config/tinysiglip.py. The same 0.19M student and the same 5,000 paired images as
# A1-A7, plus K teacher views per image and the web split UNPAIRED: its images and
# its captions sit in separate caches, so no web pair is ever seen (RECIPE=1 bash
# demo.sh builds all three caches with K = 8 and runs this).
#   python train.py config/shapes_tinysiglip.py
# (its numbers on the former 500-pair world: NOTES.md, "Reinforced distillation")
exec(open('config/tinysiglip.py').read())
exec(open('config/shapes.py').read())
out_dir = 'out/shapes/tinysiglip'
extra_image_cache = 'cache/shapes-img/web'
extra_text_cache = 'cache/shapes-txt/web'
# 3 batches a step (pairs, unpaired images, unpaired captions), K = 8 views; the A runs' 2,000
# steps (config/shapes.py): the comparison with a5 is at equal steps (report.py's convergence
# table checks that the recipe's val curve is flat by then)
views = 8

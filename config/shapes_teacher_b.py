# The demo's SigLIP 2 B stand-in (Table B): config/shapes_teacher.py's world and schedule, a
# narrower, shallower pair of towers (0.39M against the kept L stand-in's 1.07M). Kept in the
# repo as data/shapes/teacher-b (weights + log.jsonl). To retrain it (after demo.sh's packing
# of web + val, RETRAIN_TEACHER=1 bash demo.sh's step 2):
#   python train.py config/shapes_teacher.py config/shapes_teacher_b.py
out_dir = 'out/shapes/teacher-b'
image_kwargs = {'patch_size': 8, 'embed_dim': 96, 'depth': 2, 'num_heads': 3}
text_width = 96
text_depth = 1
text_heads = 3

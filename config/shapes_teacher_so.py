# The demo's SigLIP 2 So400m stand-in (Table B): config/shapes_teacher.py's world and schedule,
# wider and deeper towers (1.95M against the kept L stand-in's 1.07M). Kept in the repo as
# data/shapes/teacher-so (weights + log.jsonl). To retrain it (after demo.sh's packing of
# web + val, RETRAIN_TEACHER=1 bash demo.sh's step 2):
#   python train.py config/shapes_teacher.py config/shapes_teacher_so.py
out_dir = 'out/shapes/teacher-so'
image_kwargs = {'patch_size': 8, 'embed_dim': 160, 'depth': 4, 'num_heads': 5}
text_width = 160
text_depth = 2
text_heads = 5

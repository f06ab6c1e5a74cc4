# Table B's SigLIP 2 So400m stand-in: config/shapes_teacher.py's world and schedule with two-layer
# towers 128 wide (0.67M). B / L / So400m are one family, trained alike by the same code, widths
# 96 / 112 / 128 at one depth (deeper or wider members start slower on this schedule and
# end below: NOTES.md, "Table B's teachers").
# Kept in the repo as data/shapes/teacher-so (weights + log.jsonl). To retrain it (after the
# packing of web + val in RETRAIN_TEACHER=1 bash demo.sh's step 2):
#   python train.py config/shapes_teacher.py config/shapes_teacher_so.py
out_dir = 'out/shapes/teacher-so'
image_kwargs = {'patch_size': 8, 'embed_dim': 128, 'depth': 2, 'num_heads': 4}
text_width = 128
text_depth = 1
text_heads = 4

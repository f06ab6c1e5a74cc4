set -x
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, timm, transformers; print(torch.__version__, timm.__version__, transformers.__version__)"
python3 bench.py 2>&1 | tee $OUT/bench.txt
python3 bench.py --batch_size=256 --image_size=256 2>&1 | tail -8 | tee -a $OUT/bench.txt
python3 data/shapes/prepare.py --out_dir=/tmp/w --n_web=20000 --n_train=10 --n_val=10 --n_test=10 --image_size=64 > /dev/null
python3 - <<'PY'
import torch, transformers as T
torch.manual_seed(0)
tok = T.AutoTokenizer.from_pretrained('/tmp/w/processor')
m = T.SiglipModel(T.SiglipConfig(text_config=dict(vocab_size=256000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=64),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16, image_size=224)))
m.save_pretrained('/tmp/b16')
T.SiglipProcessor(image_processor=T.SiglipImageProcessor(size={'height': 224, 'width': 224}), tokenizer=tok).save_pretrained('/tmp/b16')
PY
python3 cache_teacher.py --data_dir=/tmp/w --split=web --teacher=/tmp/b16 --out_dir=/tmp/c --device=cuda --dtype=bfloat16 --batch_size=256 --num_workers=12 --shard_size=4096 2>&1 | grep -v "img/s]" | tail -4 | tee $OUT/cache.txt

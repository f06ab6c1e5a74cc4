"""
The miniature's stand-in for MiniLM (train.py text_init): a small BERT pretrained by masked-
language modelling on the web split's captions, with a word-level BERT tokenizer of their words,
saved as a BertModel + BertTokenizerFast (save_pretrained) that AutoModel / AutoTokenizer load.

    python data/shapes/prepare.py                 # the world first (annotations/captions_web...)
    python data/shapes/pretrain_text.py           # ~3 min on 1 CPU thread -> data/shapes/bert
    python train.py config/shapes_c3.py           # the demo student with this text tower
    python data/shapes/pretrain_text.py --data_dir=/tmp/shapes --out_dir=/tmp/bert --iters=50

Its size is config/shapes.py's text tower (64 wide, 1 layer, 2 heads, MLP 256), as MiniLM-L6-H384
is the seed's (384 wide, 6 layers), so a student costs about the same with either tower.
Masking as BERT's (Devlin et al., arXiv 1810.04805, §3.1): 15 % of the real tokens, of which
80 % become [MASK], 10 % a random word, 10 % stay. Prints the MLM loss falling and the time.
"""
import os, sys, json, time
import torch
from prepare import parse_args # this dir's: the same --key=value rule

SPECIALS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] # [PAD] = 0: the student's pad id

def make_word_tokenizer(texts, out_dir):
    """A BertTokenizerFast whose vocab.txt is [PAD] [UNK] [CLS] [SEP] [MASK] + every lowercased
    word / punctuation mark of `texts` (BERT's pre-tokenizer splits them): each word is one
    WordPiece token. Saved to out_dir -> the tokenizer."""
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertTokenizerFast
    split = BertPreTokenizer().pre_tokenize_str
    words = sorted({w for t in texts for w, _ in split(t.lower())})
    os.makedirs(out_dir, exist_ok=True)
    vocab = os.path.join(out_dir, 'vocab.txt')
    with open(vocab, 'w') as f:
        f.write('\n'.join(SPECIALS + words) + '\n')
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tok.save_pretrained(out_dir)
    return tok

# ids (B, L) -> (inputs, labels): BERT's 15 % / 80-10-10 masking of the real (non-special) tokens
def mask_tokens(ids, tok, g):
    real = ids > len(SPECIALS) - 1 # (B, L) words, not [PAD] / [CLS] / [SEP]
    picked = real & (torch.rand(ids.shape, generator=g) < 0.15)
    labels = ids.masked_fill(~picked, -100) # loss on the picked tokens only
    roll = torch.rand(ids.shape, generator=g)
    inputs = ids.masked_fill(picked & (roll < 0.8), tok.mask_token_id)
    random_words = torch.randint(len(SPECIALS), len(tok), ids.shape, generator=g)
    swap = picked & (roll >= 0.8) & (roll < 0.9)
    inputs = torch.where(swap, random_words, inputs)
    return inputs, labels

if __name__ == '__main__':
    # -------------------------------------------------------------------------
    here = os.path.dirname(os.path.abspath(__file__))
    cfg = dict(data_dir=here, out_dir=os.path.join(here, 'bert'), width=64, layers=1, heads=2,
               length=32, batch_size=128, iters=1500, lr=1e-3, seed=0, log_interval=100)
    parse_args('pretrain_text.py', cfg)
    path = os.path.join(cfg['data_dir'], 'annotations', 'captions_web2017.json')
    if not os.path.isfile(path):
        sys.exit(f"pretrain_text.py: no {path}: run data/shapes/prepare.py first")
    torch.set_num_threads(1)
    torch.manual_seed(cfg['seed'])
    from transformers import BertConfig, BertForMaskedLM, BertModel
    from transformers.utils import logging
    logging.disable_progress_bar()
    captions = [a['caption'] for a in json.load(open(path))['annotations']]
    tok = make_word_tokenizer(captions, cfg['out_dir'])
    ids = tok(captions, padding='max_length', max_length=cfg['length'], truncation=True,
              return_tensors='pt')['input_ids'] # (M, L)
    W = cfg['width']
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=W,
                                       num_hidden_layers=cfg['layers'],
                                       num_attention_heads=cfg['heads'], intermediate_size=4 * W,
                                       max_position_embeddings=64,
                                       pad_token_id=tok.pad_token_id))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg['lr'], weight_decay=0.01)
    g = torch.Generator().manual_seed(cfg['seed'])
    print(f"{len(captions)} web captions, {len(tok)} tokens, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")
    t0, smooth = time.time(), None
    for it in range(cfg['iters']):
        # linear warm-up over the first 5 %, then constant
        for group in opt.param_groups:
            group['lr'] = cfg['lr'] * min(1.0, (it + 1) / max(cfg['iters'] // 20, 1))
        batch = ids[torch.randint(len(ids), (cfg['batch_size'],), generator=g)]
        inputs, labels = mask_tokens(batch, tok, g)
        loss = model(input_ids=inputs, attention_mask=(batch != tok.pad_token_id).long(),
                     labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        smooth = loss.item() if smooth is None else 0.9 * smooth + 0.1 * loss.item()
        if it % cfg['log_interval'] == 0 or it == cfg['iters'] - 1:
            print(f"iter {it}: mlm loss {smooth:.4f} | {time.time() - t0:.1f}s", flush=True)
    # the encoder only (the MLM head is not the student's), in a BertModel with its pooler
    # (untrained: the student mean-pools, model.py) so AutoModel loads every weight it holds
    encoder = BertModel(model.config)
    encoder.load_state_dict(model.bert.state_dict(), strict=False)
    encoder.save_pretrained(cfg['out_dir'])
    print(f"saved BertModel + tokenizer to {cfg['out_dir']} ({time.time() - t0:.0f}s)")

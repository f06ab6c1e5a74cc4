"""
nanoGPT's configurator (karpathy/nanoGPT configurator.py), hardened. Exec'd by every script
after its config block and config_keys:
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    python train.py config/a1.py --batch_size=32 --out_dir=out/a1
A bare argument is a config file: Python exec'd with the script's globals (it may `import` and
read defaults: `lr_decay_iters = max_iters`), echoed except on torchrun ranks != 0.
`--key=value` sets one key, parsed with ast.literal_eval, else the raw string. Arguments apply
in argv order; unknown keys and wrong types stop the script with a message naming the key and
the file or flag.
"""
# builtins: a `compile` key shadows compile()
import builtins as _builtins, os as _os, sys as _sys, types as _types
import traceback as _traceback
from ast import literal_eval as _literal_eval
from difflib import get_close_matches as _close

def _fail(msg):
    raise SystemExit(f"config error: {msg}")

# -> the value to store, type-checked against the script's default
def _checked(key, val, where, raw=None):
    # nanoGPT let a typo in a config file create a new global silently
    if key not in config_keys:
        hint = _close(key, config_keys, n=3)
        _fail(f"unknown config key {key!r} ({where})"
              + (f"; did you mean {', '.join(hint)}?" if hint else ''))
    old = _defaults[key]
    name = f"--{key}" if raw is not None else f"{key} in {where}"
    if old is None or type(val) is type(old): # a None default takes anything
        return val
    if type(old) is float and type(val) is int: # --learning_rate=1 means 1.0
        return float(val)
    # --wandb_run_name=123 stays '123'
    if type(old) is str and (raw is not None or type(val) in (int, float)):
        return raw if raw is not None else str(val)
    # --betas=[0.9,0.95] for a tuple default
    if type(old) in (list, tuple) and type(val) in (list, tuple):
        return type(old)(val)
    hint = "; write True or False" if type(old) is bool else ''
    _fail(f"{name}: expected {type(old).__name__}, "
          f"got {type(val).__name__} ({val!r}){hint}")

_defaults = {_k: globals()[_k] for _k in config_keys} # types are checked against these
for _arg in _sys.argv[1:]:
    if not _arg.startswith('--'):
        # a config file: exec it against our globals, then vet every name it created or changed
        if not _os.path.isfile(_arg):
            _fail(f"config file {_arg!r} not found "
                  f"(a bare argument is a config file; overrides are --key=value)")
        _src = open(_arg).read()
        if int(_os.environ.get('RANK', 0)) == 0: # torchrun: only rank 0 echoes
            print(f"Overriding config with {_arg}:\n{_src}")
        _before = dict(globals())
        try:
            _code = _builtins.compile(_src, _arg, 'exec')
        except SyntaxError as _e: # one line naming the file and line, not a traceback
            _fail(f"{_arg}, line {_e.lineno}: {_e.msg}")
        try:
            exec(_code, globals())
        # NameError, ZeroDivisionError, ... raised by the config file itself
        except Exception as _e:
            _lines = [_f.lineno for _f in _traceback.extract_tb(_e.__traceback__)
                      if _f.filename == _arg]
            _fail(f"{_arg}, line {_lines[-1] if _lines else '?'}: "
                  f"{type(_e).__name__}: {_e}")
        for _k, _v in list(globals().items()):
            if _k.startswith('_') or (_k in _before and _before[_k] is _v):
                continue # private helpers and untouched names
            if _k not in config_keys and (isinstance(_v, _types.ModuleType) or callable(_v)):
                continue # `import math`, `from math import sqrt`, a helper def: not config keys
            globals()[_k] = _checked(_k, _v, _arg)
    else:
        # split at the first '=' only: --run_name=a=b works
        _key, _sep, _raw = _arg[2:].partition('=')
        if not _sep or not _key:
            _fail(f"{_arg!r}: expected --key=value")
        try:
            _val = _literal_eval(_raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            # a plain string such as --out_dir=out/a1 (or --compile=false, caught as a type error)
            _val = _raw
        globals()[_key] = _checked(_key, _val, 'command line', _raw)

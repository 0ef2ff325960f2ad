import cProfile, pstats, sys, os, warnings
os.environ["WANDB_MODE"]="offline"; os.environ["WANDB_SILENT"]="true"
warnings.filterwarnings("ignore")
from benchmarks.common import compose_train_config
from facrnn.pipeline import train
from pathlib import Path
extra = sys.argv[2:]
ov = ["experiment=synthetic_paper", f"logger={sys.argv[1]}", "trainer.max_epochs=200", "evaluate=false", *extra]
train(compose_train_config(ov, Path("/tmp/prof_a")))
pr = cProfile.Profile(); pr.enable(); train(compose_train_config(ov, Path("/tmp/prof_b"))); pr.disable()
st = pstats.Stats(pr); st.sort_stats("cumtime").print_stats(80)

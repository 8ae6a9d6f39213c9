"""The cell cycle's S-phase and G2/M-phase marker genes (human symbols) that CellCycleScoring
scores, as the platform's R worker takes them: Seurat's `cc.genes` (`s.genes`, `g2m.genes`, in
Seurat's order), from Tirosh et al., "Dissecting the multicellular ecosystem of metastatic
melanoma by single-cell RNA-seq", Science 352:189-196 (2016), doi:10.1126/science.aad0501. The
same 43 + 97 symbols, in the same order, as the Regev lab's `regev_lab_cell_cycle_genes.txt` that
scanpy's cell cycle tutorial reads. Gene symbols are facts, not code; Seurat (satijalab/seurat,
`R/data.R` documents the source) is MIT licensed.

The platform uses this original list, not Seurat's `cc.genes.updated.2019` (which has MCM7,
CENPU, POLR1B, MRPL36, PIMREG and JPT1 in place of MCM2, MLF1IP, RPA2, BRIP1, FAM64A and HN1),
and so do we.
"""

S_GENES = [
    "MCM5", "PCNA", "TYMS", "FEN1", "MCM2", "MCM4", "RRM1", "UNG", "GINS2", "MCM6", "CDCA7",
    "DTL", "PRIM1", "UHRF1", "MLF1IP", "HELLS", "RFC2", "RPA2", "NASP", "RAD51AP1", "GMNN",
    "WDR76", "SLBP", "CCNE2", "UBR7", "POLD3", "MSH2", "ATAD2", "RAD51", "RRM2", "CDC45", "CDC6",
    "EXO1", "TIPIN", "DSCC1", "BLM", "CASP8AP2", "USP1", "CLSPN", "POLA1", "CHAF1B", "BRIP1",
    "E2F8",
]  # fmt: skip

G2M_GENES = [
    "HMGB2", "CDK1", "NUSAP1", "UBE2C", "BIRC5", "TPX2", "TOP2A", "NDC80", "CKS2", "NUF2",
    "CKS1B", "MKI67", "TMPO", "CENPF", "TACC3", "FAM64A", "SMC4", "CCNB2", "CKAP2L", "CKAP2",
    "AURKB", "BUB1", "KIF11", "ANP32E", "TUBB4B", "GTSE1", "KIF20B", "HJURP", "CDCA3", "HN1",
    "CDC20", "TTK", "CDC25C", "KIF2C", "RANGAP1", "NCAPD2", "DLGAP5", "CDCA2", "CDCA8", "ECT2",
    "KIF23", "HMMR", "AURKA", "PSRC1", "ANLN", "LBR", "CKAP5", "CENPE", "CTCF", "NEK2", "G2E3",
    "GAS2L3", "CBX5", "CENPA",
]  # fmt: skip
